"""Running a study: Optuna's sampler and pruner, one run folder per trial, resuming."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from mtmm_core.errors import NonFiniteError, SpecError, UnknownComponentError, UsageError
from mtmm_core.tune.report import (BEST_FILE, CONFIG_FILE, STUDY_FILE, SUMMARY_FILE, TRIAL_LOG, TuneResult, _best,
                                   _count_done, _one_line, _Reporter, _results, _write_summary)
from mtmm_core.tune.space import PRUNER_DEFAULTS, SPACE_EXAMPLE, SearchParam, parse_space

STUDY_NAME = "mtmm"
INSTALL_HINT = "pip install 'mtmm[tune]'"

# -- running a study ------------------------------------------------------------------------------
def import_optuna() -> Any:
    """Optuna, or a UsageError saying how to install it."""
    try:
        import optuna
    except ImportError as error:
        raise UsageError(f"mtmm tune needs Optuna, which is not installed: {INSTALL_HINT}") from error
    return optuna


def tune(config: str | Path | Mapping[str, Any] | None = None, trials: int | None = None,
         out: str | Path | None = None, *, resume: str | Path | None = None, force: bool = False,
         progress: bool = False, **overrides: Any) -> TuneResult:
    """Search the config's ``tune.space`` with Optuna; returns a :class:`TuneResult`.

    ``config`` is a config file, a shipped config's name or a mapping with a ``tune`` section;
    ``overrides`` set values as in :func:`mtmm_core.train` (``tune={"trials": 5}``,
    ``**{"train.epochs": 3}``). ``trials`` is how many trials the study should hold when done
    (default ``tune.trials``). ``out`` is the tune's folder (default ``runs/tune-<time>``); ``force``
    starts a new study in a folder that holds something else. ``resume`` continues the tune in that
    folder with its own config (only ``trials`` and ``progress`` may be given with it). ``progress``
    shows each trial's training output instead of writing it to ``trial-NNN/train.log``.
    """
    from mtmm_core.api import _dotted
    from mtmm_core.config import load_config

    if resume is not None:
        if config is not None or overrides or force or out:
            raise UsageError("resume continues a tune with its own config.yaml; pass no config, overrides, out or "
                             "force with it (only trials, to ask for more trials)")
        return run_tune(None, resume, trials, resume=True, progress=progress)
    merged = load_config(config, _dotted(overrides))
    out_dir = Path(out) if out else Path("runs") / time.strftime("tune-%Y%m%d-%H%M%S")
    return run_tune(merged, out_dir, trials, force=force, progress=progress)


def run_tune(config: dict[str, Any] | None, out: str | Path, trials: int | None = None, *, resume: bool = False,
             force: bool = False, progress: bool = False) -> TuneResult:
    """:func:`tune` for a validated ``config`` (``mtmm tune`` calls this), or for the tune in ``out``
    when ``resume``. Prints one line per trial to stderr."""
    from mtmm_core.config import load_config
    from mtmm_core.run_folder import RunFolder

    optuna = import_optuna()
    out = Path(out)
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        raise UsageError(f"trials (--trials) must be an integer >= 1 (the number of trials), got {trials!r}")
    if resume:
        _check_resumable(out)
        config = load_config(out / CONFIG_FILE)
    else:
        assert config is not None
        _check_new(out, force)
    if not isinstance(config.get("tune"), Mapping):
        raise SpecError("tune", f"missing: a config to tune needs a tune section naming the keys to search, "
                        f"e.g. {SPACE_EXAMPLE} (docs/tune.md)")
    study_settings = config["tune"]
    target = trials if trials is not None else study_settings["trials"]
    config = copy.deepcopy(config)
    config["tune"] = {**study_settings, "trials": target}
    space = parse_space(study_settings["space"])
    metric = study_settings["metric"] or config["train"]["monitor"]
    direction = _direction(metric, "tune.metric" if study_settings["metric"] else "train.monitor")
    base = {name: value for name, value in config.items() if name != "tune"}

    lock = RunFolder(out)
    lock.lock()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # mtmm prints its own line per trial
    storage = None
    study = None
    try:
        if not resume:
            for name in (STUDY_FILE, f"{STUDY_FILE}-journal", SUMMARY_FILE, BEST_FILE):
                (out / name).unlink(missing_ok=True)  # --force: a new study
        (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        storage = optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY_FILE).resolve()}")
        earlier = len(_retry_interrupted(optuna, storage, None)) if resume else 0
        sampler = _sampler(optuna, study_settings["sampler"], space, config["train"]["seed"] + earlier)
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, sampler=sampler,
                                    pruner=_pruner(optuna, study_settings["pruner"]), load_if_exists=resume)
        if resume:
            _retry_interrupted(optuna, storage, study)
        done = _count_done(study.get_trials(deepcopy=False))
        remaining = target - done
        if study_settings["sampler"] == "grid":
            points = math.prod(len(param.grid()) for param in space.values())
            remaining = min(remaining, points - done)
        print(f"tuning {metric} ({direction}) over {', '.join(space)}: {target} trials"
              f"{f' ({done} done)' if done else ''}, sampler {study_settings['sampler']}, pruner "
              f"{_pruner_text(study_settings['pruner'])}; study {out / STUDY_FILE}", file=sys.stderr)
        if remaining > 0:
            objective = _Objective(optuna, base, space, metric, out, force, progress)
            callback = _Reporter(space, metric, direction, target, out, config)
            study.optimize(objective, n_trials=remaining, catch=(NonFiniteError, _non_finite_loss_error()),
                           callbacks=[callback], gc_after_trial=True)
        results = _results(study, space, out)
        _write_summary(results, metric, direction, out, config)
        return TuneResult(path=out, metric=metric, direction=direction, trials=results,
                          best=_best(results, direction), study=study)
    except BaseException:
        if study is not None:
            with contextlib.suppress(Exception):  # the study may be what failed
                _write_summary(_results(study, space, out), metric, direction, out, config)
        raise
    finally:
        optuna.logging.set_verbosity(verbosity)
        if storage is not None:
            with contextlib.suppress(Exception):
                storage.engine.dispose()
        lock.unlock()


def _non_finite_loss_error() -> type[Exception]:
    from mtmm_core.trainer import NonFiniteLossError

    return NonFiniteLossError


def _check_new(out: Path, force: bool) -> None:
    """Refuse a folder that holds a tune or anything else, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: give a new or empty folder")
    if not out.exists() or force:
        return
    contents = sorted(p.name for p in out.iterdir() if p.name != ".lock")
    if not contents:
        return
    if (out / STUDY_FILE).is_file():
        raise UsageError(f"{out} already holds a tune ({STUDY_FILE}): continue it with `mtmm tune --resume {out}`, "
                         "choose another --out, or pass --force to start a new study in it")
    shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
    raise UsageError(f"--out {out} is not empty and holds no tune (it holds {shown}); choose an empty or new "
                     "folder, or pass --force to tune in it")


def _check_resumable(out: Path) -> None:
    if not out.is_dir():
        raise UsageError(f"{out}: no such tune folder")
    for name in (STUDY_FILE, CONFIG_FILE):
        if not (out / name).is_file():
            raise UsageError(f"{out / name} does not exist: {out} is not a tune folder (one holds {STUDY_FILE} "
                             f"and {CONFIG_FILE}, written by `mtmm tune`)")


def _direction(metric: str, source: str) -> str:
    from mtmm_core.evaluation import is_better

    try:
        return "maximize" if is_better(metric, 1.0, 0.0) else "minimize"
    except UnknownComponentError as error:
        raise SpecError(source, f"{metric!r}: {error}") from error


def _sampler(optuna: Any, name: str, space: Mapping[str, SearchParam], seed: int) -> Any:
    seed %= 2**32
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({key: param.grid() for key, param in space.items()}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(optuna: Any, pruner: str | Mapping[str, Any]) -> Any:
    settings = {"name": pruner, **PRUNER_DEFAULTS} if isinstance(pruner, str) else dict(pruner)
    if settings["name"] == "none":
        return optuna.pruners.NopPruner()
    # Optuna never prunes at a step below n_warmup_steps; the steps are the epochs, from 1.
    return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                       n_warmup_steps=settings["warmup_epochs"] + 1)


def _pruner_text(pruner: str | Mapping[str, Any]) -> str:
    if isinstance(pruner, str):
        pruner = {"name": pruner, **PRUNER_DEFAULTS}
    if pruner["name"] == "none":
        return "none"
    return (f"median (after {pruner['startup_trials']} trials, from epoch {pruner['warmup_epochs'] + 1})")




def _retry_interrupted(optuna: Any, storage: Any, study: Any) -> list[Any]:
    """The study's trials, read from ``storage``. With a ``study``: trials left running by a process
    that died are marked failed and interrupted, and every interrupted trial not yet retried is
    enqueued again with its values (it runs first, in a new folder)."""
    from optuna.trial import TrialState

    try:
        study_id = storage.get_study_id_from_name(STUDY_NAME)
    except KeyError as error:
        raise UsageError(f"{STUDY_FILE} holds no study named {STUDY_NAME!r}: it was not written by `mtmm tune`; "
                         "start a new tune with --force") from error
    trials = storage.get_all_trials(study_id, deepcopy=False)
    if study is None:
        return trials
    for trial in trials:
        if trial.state == TrialState.RUNNING:  # this process holds the folder's lock: nobody runs it
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_user_attr(trial_id, "interrupted", "its process ended")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and trial.number not in retried:
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    return trials


class _Objective:
    """Trains one trial: its run folder, its values as overrides, its metric reported every epoch."""

    def __init__(self, optuna: Any, base: dict[str, Any], space: Mapping[str, SearchParam], metric: str,
                 out: Path, force: bool, progress: bool):
        self.optuna, self.base, self.space, self.metric = optuna, base, space, metric
        self.out, self.force, self.progress = out, force, progress

    def __call__(self, trial: Any) -> float:
        from mtmm_core import api

        values = {key: param.suggest(trial) for key, param in self.space.items()}
        folder = self.out / f"trial-{trial.number:03d}"
        trial.set_user_attr("run", folder.name)
        epochs = _EpochReporter(self.optuna, trial, self.metric, self.base["train"]["monitor"])
        overrides = dict(values)
        if not self.progress:
            overrides["train.progress"] = False
        try:
            with _trial_output(folder, self.progress):
                api.train(self.base, out=folder, force=self.force, on_epoch_end=epochs, **overrides)
        except self.optuna.TrialPruned:
            raise
        except (NonFiniteError, _non_finite_loss_error()) as error:
            trial.set_user_attr("failure", _one_line(error))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except BaseException as error:
            trial.set_user_attr("error", _one_line(error))
            raise
        finally:
            trial.set_user_attr("epochs", epochs.epochs)
            trial.set_user_attr("best_epoch", epochs.best_epoch)
            trial.set_user_attr("metric", epochs.value)
        if epochs.value is None or not math.isfinite(epochs.value):
            trial.set_user_attr("failure", f"validation {self.metric} was never a finite number")
            return float("nan")  # Optuna records a NaN objective as a failed trial
        return epochs.value


class _EpochReporter:
    """``on_epoch_end`` of a trial: tracks the best epoch (by ``train.monitor``) and the tuned metric
    there, reports the metric to Optuna, and raises ``TrialPruned`` when the pruner says so."""

    def __init__(self, optuna: Any, trial: Any, metric: str, monitor: str):
        self.optuna, self.trial, self.metric, self.monitor = optuna, trial, metric, monitor
        self.epochs = 0
        self.best_epoch: int | None = None
        self.best_monitored: float | None = None
        self.value: float | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        from mtmm_core.evaluation import is_better

        validation, epoch = record["validation"], record["epoch"]
        if self.metric not in validation:
            raise UsageError(f"tune.metric {self.metric!r} is not a validation metric of this run; available: "
                             f"{', '.join(sorted(validation))}")
        value = float(validation[self.metric])
        self.epochs = epoch
        monitored = validation.get(self.monitor)
        if monitored is not None and is_better(self.monitor, monitored, self.best_monitored):
            self.best_monitored, self.best_epoch, self.value = monitored, epoch, value
        if math.isfinite(value):
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                self.trial.set_user_attr("pruned", f"at epoch {epoch}, validation {self.metric} {value:.4g}")
                raise self.optuna.TrialPruned(f"pruned at epoch {epoch}")


@contextlib.contextmanager
def _trial_output(folder: Path, show: bool) -> Iterator[None]:
    """Unless ``show``, the trial's training output (its stderr) goes to ``folder/train.log``."""
    if show:
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        if buffer.getvalue() and folder.is_dir():
            with contextlib.suppress(OSError):
                (folder / TRIAL_LOG).write_text(buffer.getvalue())
