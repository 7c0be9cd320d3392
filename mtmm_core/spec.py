"""``build_model(spec)``: validate a model spec (a dict or YAML file) and compose the model from names.

A spec::

    dim: 128                      # optional: token width given to every encoder and the fusion
    modality_dropout: 0.1         # optional: hide modalities at random while training
    encoders:                     # modality -> encoder name and parameters
      image: {name: cnn}
      audio: {name: sequence_transformer, in_features: 13}
    fusion: {name: cross_attention, heads: 4}
    architecture: {name: mmoe}    # optional, default hard_sharing
    tasks:                        # task -> head name and parameters
      digit: {head: classification, num_classes: 10}
      sum: {head: regression, loss: huber}
    weighting: {name: uncertainty}  # optional, default equal

Every error names the path in the spec, e.g. ``tasks.digit.num_classes``.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtmm_core.components import check_arguments, get_component
from mtmm_core.errors import AmbiguousComponentError, SpecError, UnknownComponentError
from mtmm_core.model import MultimodalMultitaskModel

TOP_LEVEL_KEYS = ("dim", "modality_dropout", "encoders", "fusion", "architecture", "tasks", "weighting")
DEFAULT_ARCHITECTURE = {"name": "hard_sharing"}
DEFAULT_WEIGHTING = {"name": "equal"}


def load_spec(source: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A spec as a dict, from a mapping or a YAML file path."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise SpecError("", f"spec file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        from mtmm_core.config import yaml_problem

        raise SpecError("", f"{path} is not valid YAML: {yaml_problem(error)}") from error
    if not isinstance(loaded, Mapping):
        raise SpecError("", f"{path} must hold a mapping at the top level, got {type(loaded).__name__}")
    return dict(loaded)


def build_model(spec: Mapping[str, Any] | str | Path) -> MultimodalMultitaskModel:
    """Compose a :class:`MultimodalMultitaskModel` from a spec (dict or YAML path); see this module's docstring."""
    spec = load_spec(spec)
    _check_keys(spec, "", TOP_LEVEL_KEYS, required=("encoders", "fusion", "tasks"))
    check_spec_values(spec)
    dim = _typed(spec, "dim", int, 128, "")
    modality_dropout = _typed(spec, "modality_dropout", float, 0.0, "")

    encoder_specs = _mapping(spec["encoders"], "encoders", non_empty=True)
    encoders = {}
    for modality, entry in encoder_specs.items():
        name, params = _named(entry, f"encoders.{modality}", "name")
        encoders[modality] = instantiate("encoder", name, params, f"encoders.{modality}", defaults={"dim": dim})
    input_dims = {m: _out_dim(e, f"encoders.{m}") for m, e in encoders.items()}

    name, params = _named(spec["fusion"], "fusion", "name")
    fusion = instantiate("fusion", name, params, "fusion", defaults={"dim": dim}, input_dims=input_dims)

    task_specs = _mapping(spec["tasks"], "tasks", non_empty=True)
    tasks = list(task_specs)
    name, params = _named(_with_default_name(spec.get("architecture"), DEFAULT_ARCHITECTURE), "architecture", "name")
    architecture = instantiate("architecture", name, params, "architecture", defaults={"dim": dim},
                                in_dim=_out_dim(fusion, "fusion"), tasks=tasks)

    heads = {}
    for task, entry in task_specs.items():
        name, params = _named(entry, f"tasks.{task}", "head")
        heads[task] = instantiate("head", name, params, f"tasks.{task}",
                                   in_dim=_out_dim(architecture, "architecture"), modality_dims=input_dims)
        _check_loss_and_metrics(heads[task], name, f"tasks.{task}")

    name, params = _named(_with_default_name(spec.get("weighting"), DEFAULT_WEIGHTING), "weighting", "name")
    weighting = instantiate("weighting", name, params, "weighting", tasks=tasks)
    return MultimodalMultitaskModel(encoders, fusion, architecture, heads, weighting, modality_dropout, spec)


def check_spec_values(spec: Mapping[str, Any], prefix: str = "") -> None:
    """The checks that need no component: ``dim``, ``modality_dropout``, and the modality and task names
    (those present). Errors name ``prefix + key``; run configs call it with ``prefix="model."``, before training."""
    dim = _typed(spec, "dim", int, 128, prefix)
    if dim < 1:
        raise SpecError(f"{prefix}dim", f"must be a positive integer (the token width, e.g. 64), got {dim}")
    modality_dropout = _typed(spec, "modality_dropout", float, 0.0, prefix)
    if not 0.0 <= modality_dropout < 1.0:  # also refuses NaN
        raise SpecError(f"{prefix}modality_dropout", f"must be in [0, 1), got {modality_dropout}")
    if isinstance(spec.get("encoders"), Mapping):
        _check_names(spec["encoders"], f"{prefix}encoders", "modality",
                     "module names cannot contain dots")
    if isinstance(spec.get("tasks"), Mapping):
        _check_names(spec["tasks"], f"{prefix}tasks", "task", "metric keys are '<task>.<metric>'")


def instantiate(kind: str, name: str, params: dict[str, Any], path: str,
                defaults: Mapping[str, Any] | None = None, **wiring: Any) -> Any:
    """Resolve ``name``, check ``params`` against the factory, add the ``defaults`` (which ``params`` may
    override) and the ``wiring`` (which they may not) that it accepts, and call it. Every error is a
    :class:`SpecError` at ``path``; the result's ``mtmm_origin`` names it in run-time errors."""
    key = "head" if kind == "head" else "name"
    try:
        component = get_component(kind, name)
    except (UnknownComponentError, AmbiguousComponentError) as error:
        raise SpecError(f"{path}.{key}", str(error)) from error
    for argument in wiring:
        if argument in params:
            raise SpecError(f"{path}.{argument}", "is set by mtmm from the rest of the spec; remove it")
    check_arguments(component, params, path, supplied=frozenset(wiring) | frozenset(defaults or {}))
    accepted = _accepted_arguments(component.factory)
    arguments = {k: v for k, v in (defaults or {}).items() if accepted is None or k in accepted}
    arguments.update(params)
    arguments.update({k: v for k, v in wiring.items() if accepted is None or k in accepted})
    origin = f"{kind} {component.name!r} from {component.distribution} {component.version}".rstrip()
    try:
        built = component.factory(**arguments)
    except (ValueError, RuntimeError, ArithmeticError) as error:
        # RuntimeError/ArithmeticError: torch refusing e.g. a negative size, or a zero head count
        raise SpecError(path, f"{origin} rejected its parameters: {error}") from error
    except Exception as error:  # a bug inside the component's constructor: name it, keep the chain
        raise SpecError(path, f"{origin} failed while being built, with {type(error).__name__}: {error} "
                              "(a bug in that component; the chained exception has its traceback)") from error
    try:
        built.mtmm_origin = origin  # errors at run time name the component the same way (component_label)
    except (AttributeError, TypeError):
        pass  # an object that takes no attributes keeps its class name in messages
    return built


def _check_loss_and_metrics(head: Any, name: str, path: str) -> None:
    """A head's ``loss_kind`` must name a registered loss (``register_losses``) and every name in its
    ``metrics`` a registered metric (``register_metrics``)."""
    loss = getattr(head, "loss_kind", None)
    if not isinstance(loss, str):
        raise SpecError(f"{path}.head", f"head {name!r} has no loss_kind; a head names its loss by registered "
                                        "name (mtmm list loss)")
    try:
        get_component("loss", loss)
    except (UnknownComponentError, AmbiguousComponentError) as error:
        raise SpecError(f"{path}.head", f"head {name!r} names the loss {loss!r}: {error}") from error
    for metric in getattr(head, "metrics", ()):
        try:
            get_component("metric", metric)
        except (UnknownComponentError, AmbiguousComponentError) as error:
            raise SpecError(f"{path}.head", f"head {name!r} lists the metric {metric!r}: {error}") from error


def _accepted_arguments(factory: Any) -> set[str] | None:
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def _named(entry: Any, path: str, key: str) -> tuple[str, dict[str, Any]]:
    """Split ``{key: name, **params}`` (or a bare name string) into name and params."""
    if isinstance(entry, str):
        return entry, {}
    if not isinstance(entry, Mapping):
        raise SpecError(path, f"expected a mapping with {key!r} (or a bare name), got {type(entry).__name__}")
    if key not in entry:
        raise SpecError(f"{path}.{key}", "missing; say which component to use")
    name = entry[key]
    if not isinstance(name, str):
        raise SpecError(f"{path}.{key}", f"expected a component name (str), got {type(name).__name__}")
    params = {k: v for k, v in entry.items() if k != key}
    bad = [k for k in params if not isinstance(k, str)]
    if bad:
        raise SpecError(path, f"parameter names must be strings, got {bad}")
    return name, params


def _with_default_name(entry: Any, default: dict[str, str]) -> Any:
    """The optional sections default their component: ``architecture: {hidden: 256}`` means hard_sharing."""
    if entry is None:
        return dict(default)
    if isinstance(entry, Mapping) and "name" not in entry:
        return {**default, **entry}
    return entry


def _check_names(entries: Mapping[Any, Any], path: str, what: str, why: str) -> None:
    """Modality and task names are non-empty strings without dots: they become module names and,
    for tasks, metric keys ``<task>.<metric>``."""
    for name in entries:
        if not isinstance(name, str) or not name:
            raise SpecError(f"{path}.{name}", f"a {what} name must be a non-empty string, got {name!r}")
        if "." in name:
            raise SpecError(f"{path}.{name}", f"a {what} name must not contain '.' ({why}); "
                            f"use e.g. {name.replace('.', '_')!r}")


def _mapping(value: Any, path: str, non_empty: bool = False) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"expected a mapping, got {type(value).__name__}")
    if non_empty and not value:
        raise SpecError(path, "must not be empty")
    return dict(value)


def _typed(spec: Mapping[str, Any], key: str, kind: type, default: Any, path: str) -> Any:
    value = spec.get(key, default)
    ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
    if isinstance(value, bool) or not ok:
        raise SpecError(f"{path}{key}", f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_keys(spec: Mapping[str, Any], path: str, valid: tuple[str, ...], required: tuple[str, ...]) -> None:
    for key in spec:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{path}{key}", f"unknown key{hint} Valid keys: {', '.join(valid)}")
    for key in required:
        if key not in spec:
            raise SpecError(f"{path}{key}", "missing required key")


def _out_dim(module: Any, path: str) -> int:
    out_dim = getattr(module, "out_dim", None)
    if not isinstance(out_dim, int):
        raise SpecError(path, f"{type(module).__name__} has no integer attribute out_dim (see docs/plugins.md)")
    return out_dim
