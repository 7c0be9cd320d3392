"""What a tune reports: each trial's result, the best one, ``summary.csv`` and ``best.yaml``."""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtmm_core.tune.space import SearchParam

STUDY_FILE, SUMMARY_FILE, BEST_FILE, CONFIG_FILE, TRIAL_LOG = (
    "study.db", "summary.csv", "best.yaml", "config.yaml", "train.log")  # in the tune folder; TRIAL_LOG in each trial's


@dataclass
class TrialResult:
    """One trial: its ``values`` (searched key -> value), ``state`` (complete, pruned, failed, running),
    ``metric`` (the tuned validation metric at its best epoch), ``best_epoch`` (by ``train.monitor``),
    ``epochs`` trained, ``seconds``, its run folder ``run`` and a ``note`` (why it failed or was pruned)."""

    number: int
    state: str
    values: dict[str, Any]
    metric: float | None
    best_epoch: int | None
    epochs: int | None
    seconds: float | None
    run: Path
    note: str = ""


@dataclass
class TuneResult:
    """A finished (or stopped) tune: its folder, the tuned ``metric`` and ``direction`` (maximize or
    minimize), every trial, the best complete trial (None when none completed) and the Optuna study."""

    path: Path
    metric: str
    direction: str
    trials: list[TrialResult] = field(default_factory=list)
    best: TrialResult | None = None
    study: Any = None

    @property
    def best_config(self) -> dict[str, Any] | None:
        """The config of the best trial, as ``best.yaml`` holds it."""
        path = self.path / BEST_FILE
        return yaml.safe_load(path.read_text()) if self.best is not None and path.is_file() else None


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


class _Reporter:
    """After each trial: one line on stderr, and ``summary.csv`` and ``best.yaml`` brought up to date."""

    def __init__(self, space: Mapping[str, SearchParam], metric: str, direction: str, target: int, out: Path,
                 config: dict[str, Any]):
        self.space, self.metric, self.direction, self.target = space, metric, direction, target
        self.out, self.config = out, config

    def __call__(self, study: Any, frozen: Any) -> None:
        results = _results(study, self.space, self.out)
        best = _best(results, self.direction)
        trial = next(r for r in results if r.number == frozen.number)
        done = _count_done(study.get_trials(deepcopy=False))
        is_best = best is not None and best.number == trial.number
        print(_trial_line(trial, self.metric, f"[{done}/{self.target}]", is_best), file=sys.stderr)
        _write_summary(results, self.metric, self.direction, self.out, self.config)


def _trial_line(trial: TrialResult, metric: str, count: str, is_best: bool) -> str:
    values = "  ".join(f"{key}={format_value(value)}" for key, value in trial.values.items())
    seconds = f"  {trial.seconds:.0f} s" if trial.seconds is not None else ""
    if trial.state == "failed":
        return f"trial {trial.number} {count}  failed: {trial.note}{seconds}  {values}"
    score = (f"{metric} {trial.metric:.4g} (epoch {trial.best_epoch})" if trial.metric is not None
             else f"{metric} -")
    state = f"pruned at epoch {trial.epochs}" if trial.state == "pruned" else trial.state
    return f"trial {trial.number} {count}  {state}  {score}{seconds}  {values}" + ("  (best so far)" if is_best else "")


def format_value(value: Any) -> str:
    """A searched value for a line of text: floats to 4 significant digits, lists as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def _results(study: Any, space: Mapping[str, SearchParam], out: Path) -> list[TrialResult]:
    """Every trial of the study that started (waiting ones are left out), as :class:`TrialResult`."""
    results = []
    for trial in study.get_trials(deepcopy=False):
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}.get(
            trial.state.name)
        if state is None:
            continue
        attrs = trial.user_attrs
        interrupted = attrs.get("interrupted")
        note = (attrs.get("failure") or attrs.get("error") or attrs.get("pruned")
                or (f"interrupted ({interrupted})" if isinstance(interrupted, str) else
                    "interrupted" if interrupted else ""))
        if "retry_of" in attrs:
            note = f"{note}; " if note else ""
            note += f"retry of interrupted trial {attrs['retry_of']}"
        seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                   if trial.datetime_complete and trial.datetime_start and not isinstance(interrupted, str)
                   else None)  # a trial whose process ended was marked failed when the tune resumed
        values = {key: space[key].decode(value) if key in space else value for key, value in trial.params.items()}
        metric = attrs.get("metric")
        results.append(TrialResult(number=trial.number, state=state, values=values,
                                   metric=metric if metric is None or math.isfinite(metric) else None,
                                   best_epoch=attrs.get("best_epoch"), epochs=attrs.get("epochs"), seconds=seconds,
                                   run=out / attrs.get("run", f"trial-{trial.number:03d}"), note=note or ""))
    return results


def _best(results: list[TrialResult], direction: str) -> TrialResult | None:
    complete = [r for r in results if r.state == "complete" and r.metric is not None]
    if not complete:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(complete, key=lambda r: (sign * r.metric, r.number))


def best_config(config: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The full config a trial trained with: the tune's ``config`` without its ``tune`` section, with the
    trial's ``values`` set as ``--set`` sets them (what ``best.yaml`` holds)."""
    from mtmm_core.config import load_config

    base = {name: value for name, value in config.items() if name != "tune"}
    return load_config(base, [f"{key}={json.dumps(value)}" for key, value in values.items()])


def _write_summary(results: list[TrialResult], metric: str, direction: str, out: Path,
                   config: dict[str, Any]) -> None:
    """``summary.csv`` (one row per trial) and ``best.yaml`` (the best complete trial's config)."""
    keys = list(dict.fromkeys(key for r in results for key in r.values))
    temporary = out / f".{SUMMARY_FILE}.tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", metric, "best_epoch", "epochs", "seconds", *keys, "run", "note"])
        for r in results:
            writer.writerow([r.number, r.state, "" if r.metric is None else repr(r.metric),
                             "" if r.best_epoch is None else r.best_epoch, "" if r.epochs is None else r.epochs,
                             "" if r.seconds is None else f"{r.seconds:.1f}",
                             *(_csv_value(r.values[k]) if k in r.values else "" for k in keys), r.run.name, r.note])
    temporary.replace(out / SUMMARY_FILE)
    best = _best(results, direction)
    if best is None:
        return
    chosen = best_config(config, best.values)
    header = (f"# The best trial of the tune in {out}: trial {best.number} ({best.run.name}), validation "
              f"{metric} {best.metric:.6g} at epoch {best.best_epoch}.\n"
              f"# Train it again with `mtmm train {out / BEST_FILE}`.\n")
    temporary = out / f".{BEST_FILE}.tmp"
    temporary.write_text(header + yaml.safe_dump(chosen, sort_keys=False))
    temporary.replace(out / BEST_FILE)


def _csv_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)

def _count_done(trials: list[Any]) -> int:
    """Trials that count towards ``trials``: complete, pruned, or failed with a non-finite loss (an
    interrupted trial, or one stopped by an error, does not count)."""
    return sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED")
               or (t.state.name == "FAIL" and "failure" in t.user_attrs))
