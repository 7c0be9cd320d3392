"""The ``tune`` config section: its settings and search space, checked against the rest of the config."""

from __future__ import annotations

import difflib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping


from mtmm_core.errors import SpecError

TUNE_DEFAULTS: dict[str, Any] = {"trials": 20, "metric": None, "sampler": "tpe", "pruner": "median"}
TUNE_KEYS = (*TUNE_DEFAULTS, "space")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
PRUNER_DEFAULTS = {"startup_trials": 5, "warmup_epochs": 1}
RANGE_KEYS = ("low", "high", "log", "step")
SEARCHABLE_SECTIONS = ("data", "model", "train", "transfer")
SPACE_EXAMPLE = ("tune.space: {train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}, "
                 "model.fusion.name: [concat, gated]}")


# -- the search space -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchParam:
    """One searched config key: a list of ``choices``, or a range ``low``..``high`` (``log``, ``step``)."""

    key: str
    choices: tuple[Any, ...] | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    integer: bool = False  # a range of ints (low, high and step are all ints)
    encoded: bool = False  # the choices hold lists or mappings: Optuna sees them as JSON text

    def suggest(self, trial: Any) -> Any:
        """The trial's value of this key, as the config takes it."""
        if self.choices is not None:
            return self.decode(trial.suggest_categorical(self.key, self.optuna_choices()))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def optuna_choices(self) -> list[Any]:
        assert self.choices is not None
        return [json.dumps(choice) for choice in self.choices] if self.encoded else list(self.choices)

    def decode(self, value: Any) -> Any:
        """A value as Optuna stores it (JSON text for list choices) as the config takes it."""
        return json.loads(value) if self.encoded and isinstance(value, str) else value

    def examples(self) -> list[Any]:
        """The values checked against the config before tuning: every choice, or both ends of the range."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def grid(self) -> list[Any]:
        """Every value (as Optuna sees it), for the grid sampler; a SpecError for a continuous range."""
        if self.choices is not None:
            return self.optuna_choices()
        if self.integer:
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            raise SpecError(f"tune.space.{self.key}", "sampler grid needs a list of values or a range with a "
                            f"step (e.g. {{low: {self.low}, high: {self.high}, step: ...}}); this range is "
                            "continuous")
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def as_config(self) -> Any:
        """The normalised ``tune.space`` entry: the list of choices, or ``{low, high[, log][, step]}``."""
        if self.choices is not None:
            return list(self.choices)
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {}),
                **({"step": self.step} if self.step is not None else {})}


def _number(value: Any) -> Any:
    from mtmm_core.config import yaml_number

    return yaml_number(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_param(key: Any, spec: Any) -> SearchParam:
    """``tune.space[key]`` as a :class:`SearchParam`; a SpecError naming ``tune.space.<key>`` otherwise."""
    path = f"tune.space.{key}"
    if not isinstance(key, str) or not key or not all(key.split(".")):
        raise SpecError(f"tune.space.{key}", "a searched key must be a dotted config key such as train.lr or "
                        "model.fusion.name (what --set takes)")
    section = key.split(".")[0]
    if section not in SEARCHABLE_SECTIONS or "." not in key:
        close = difflib.get_close_matches(section, SEARCHABLE_SECTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close and close[0] != section else ""
        raise SpecError(path, f"is not a key tune can search{hint}: a searched key is a --set key inside one of "
                        f"the sections {', '.join(SEARCHABLE_SECTIONS)}, such as train.lr or model.fusion.name")
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SpecError(path, "the list of choices is empty; give at least one value, e.g. [concat, gated]")
        choices = tuple(_number(choice) for choice in spec)
        encoded = any(isinstance(choice, (list, tuple, dict)) for choice in choices)
        if len({json.dumps(choice, sort_keys=True) for choice in choices}) < len(choices):
            raise SpecError(path, f"the choices {list(choices)} repeat a value; list each value once")
        return SearchParam(key, choices=choices, encoded=encoded)
    if not isinstance(spec, Mapping):
        raise SpecError(path, f"expected a list of choices (e.g. [32, 64]) or a range {{low: ..., high: ...}} "
                        f"with optional log: true or step: ..., got {type(spec).__name__} {spec!r}; to fix a "
                        f"value for every trial, set it in the config instead")
    for name in spec:
        if name not in RANGE_KEYS:
            close = difflib.get_close_matches(str(name), RANGE_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{path}.{name}", f"unknown range setting{hint} Valid: {', '.join(RANGE_KEYS)}")
    for name in ("low", "high"):
        if name not in spec:
            raise SpecError(f"{path}.{name}", "missing: a range needs low and high, e.g. {low: 1.0e-4, high: 1.0e-2}")
    low, high, step = _number(spec["low"]), _number(spec["high"]), _number(spec.get("step"))
    log = spec.get("log", False)
    for name, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if not _is_number(value) or not math.isfinite(value):
            raise SpecError(f"{path}.{name}", f"expected a finite number, got {type(value).__name__} {value!r}")
    if not isinstance(log, bool):
        raise SpecError(f"{path}.log", f"expected true or false, got {type(log).__name__} {log!r}")
    if low >= high:
        raise SpecError(path, f"low ({low}) must be below high ({high}); to fix a value for every trial, set it "
                        "in the config instead")
    if step is not None and step <= 0:
        raise SpecError(f"{path}.step", f"must be > 0, got {step}")
    if log and low <= 0:
        raise SpecError(f"{path}.low", f"a log range needs low > 0, got {low}")
    integer = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    if log and step is not None and not (integer and step == 1):
        raise SpecError(path, "log and step cannot be combined; drop one of them")
    if integer and step is not None and (high - low) % step:
        raise SpecError(path, f"high - low ({high - low}) must be a multiple of step ({step}), e.g. "
                        f"high: {low + (high - low) // step * step}")
    return SearchParam(key, low=low, high=high, log=log, step=step, integer=integer)


def flat_space(space: Any) -> dict[str, Any]:
    """``tune.space`` with dotted keys: nested mappings (``{train: {lr: ...}}``, which ``--set
    tune.space.train.lr=...`` writes) become ``{"train.lr": ...}``. A mapping with ``low`` or ``high``
    is a range, not a level of nesting. A key given both ways takes the later value (so ``--set``
    replaces a dotted key of the config file)."""
    if space is None:
        raise SpecError("tune.space", f"missing: name the config keys to search, e.g. {SPACE_EXAMPLE}")
    if not isinstance(space, Mapping) or not space:
        raise SpecError("tune.space", f"expected a mapping of config keys to their values or ranges, e.g. "
                        f"{SPACE_EXAMPLE}; got {type(space).__name__} {space!r}")
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, spec in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(spec, Mapping) and spec and "low" not in spec and "high" not in spec:
                walk(spec, dotted + ".")
            else:
                flat.pop(dotted, None)
                flat[dotted] = spec  # given twice: the later one, which --set writes nested, wins

    walk(space, "")
    return flat


def parse_space(space: Any) -> dict[str, SearchParam]:
    """``tune.space`` as ``{key: SearchParam}``; errors name ``tune.space`` or ``tune.space.<key>``."""
    return {key: parse_param(key, spec) for key, spec in flat_space(space).items()}


def _parse_pruner(pruner: Any) -> dict[str, Any] | str:
    if pruner is None:
        return "none"
    if isinstance(pruner, str):
        if pruner not in PRUNERS:
            raise SpecError("tune.pruner", f"unknown pruner {pruner!r}; valid: {', '.join(PRUNERS)}, or a mapping "
                            "{name: median, startup_trials: 5, warmup_epochs: 1}")
        return pruner
    if not isinstance(pruner, Mapping):
        raise SpecError("tune.pruner", f"expected median, none or a mapping {{name: median, startup_trials: 5, "
                        f"warmup_epochs: 1}}, got {type(pruner).__name__} {pruner!r}")
    settings = {"name": "median", **PRUNER_DEFAULTS, **pruner}
    for key, value in settings.items():
        if key == "name":
            if value not in PRUNERS:
                raise SpecError("tune.pruner.name", f"unknown pruner {value!r}; valid: {', '.join(PRUNERS)}")
        elif key not in PRUNER_DEFAULTS:
            raise SpecError(f"tune.pruner.{key}", f"unknown setting; valid: name, {', '.join(PRUNER_DEFAULTS)}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpecError(f"tune.pruner.{key}", f"expected an integer >= 0, got {value!r}")
    return settings


def tune_settings(section: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tune`` section, checked and completed with its defaults (called by
    :func:`mtmm_core.config.validate_config`). ``config`` is the rest of the validated config: every
    choice and both ends of every range of ``tune.space`` are checked as ``--set`` values against it,
    so a misspelt key or a value out of range is an error naming ``tune.space.<key>`` before any trial."""
    if not isinstance(section, Mapping):
        raise SpecError("tune", f"expected a mapping with {', '.join(TUNE_KEYS)}, got {type(section).__name__}")
    for key in section:
        if key not in TUNE_KEYS:
            close = difflib.get_close_matches(str(key), TUNE_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"tune.{key}", f"unknown setting{hint} Valid settings: {', '.join(TUNE_KEYS)}")
    settings = {**TUNE_DEFAULTS, **section}
    trials = settings["trials"]
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise SpecError("tune.trials", f"expected an integer >= 1 (the number of trials), got {trials!r}")
    metric = settings["metric"]
    if metric is not None:
        _check_metric(metric, config.get("model", {}).get("tasks"))
    if settings["sampler"] not in SAMPLERS:
        close = difflib.get_close_matches(str(settings["sampler"]), SAMPLERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError("tune.sampler", f"unknown sampler {settings['sampler']!r}{hint}; valid: {', '.join(SAMPLERS)}")
    settings["pruner"] = _parse_pruner(settings["pruner"])
    space = parse_space(settings.get("space"))
    settings["space"] = {key: param.as_config() for key, param in space.items()}
    if settings["sampler"] == "grid":
        for param in space.values():
            param.grid()
    _check_values(space, config)
    return settings


def _check_metric(metric: Any, tasks: Any) -> None:
    task, dot, name = metric.rpartition(".") if isinstance(metric, str) else ("", "", "")
    if metric != "loss" and not (dot and task and name):
        raise SpecError("tune.metric", f"expected null (train.monitor), 'loss' or '<task>.<metric>' such as "
                        f"'match.accuracy', got {metric!r}")
    if metric != "loss" and isinstance(tasks, Mapping) and task not in tasks:
        close = difflib.get_close_matches(task, [str(t) for t in tasks], n=1)
        hint = f" (did you mean {close[0] + '.' + name!r}?)" if close else ""
        raise SpecError("tune.metric", f"{metric!r} names no task of model.tasks{hint}; valid: 'loss' or "
                        f"'<task>.<metric>' with a task among {', '.join(map(str, tasks))}")


def _check_values(space: Mapping[str, SearchParam], config: Mapping[str, Any]) -> None:
    """Each choice, and both ends of each range, set into ``config`` as ``--set`` would: a SpecError
    naming ``tune.space.<key>`` and the value when the config refuses it (an unknown key, a value out of range)."""
    from mtmm_core.config import ConfigWarning, load_config

    rest = {name: value for name, value in config.items() if name != "tune"}
    for param in space.values():
        for value in param.examples():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConfigWarning)
                    load_config(rest, [f"{param.key}={json.dumps(value)}"])
            except SpecError as error:
                raise SpecError(f"tune.space.{param.key}", f"the value {value!r} does not fit the config: {error}"
                                ) from error
