"""``mtmm plot RUN_DIR``: a run's training curves (the confusion matrices of ``mtmm evaluate --plot`` are
in :mod:`mtmm_core.confusion`). docs/runs.md explains how to read them.

The training figure has one block of two panels per task, its losses above and its validation
metrics below, and a first block with the total loss (and the monitored metric) above and the task
weights below. The best epoch by ``train.monitor`` is a dotted vertical line in every panel.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from mtmm_core.config import check_output_file
from mtmm_core.errors import MtmmError, UsageError

LOG_KEYS = ("epoch", "train", "validation", "task_weights")

#: Built-in metrics by family; one axis holds one family, so scales never mix.
SCORE_METRICS = ("accuracy", "macro_f1", "auroc", "r2", "retrieval_accuracy")  # at most 1, higher is better
ERROR_METRICS = ("mae", "rmse")  # in the target's units, lower is better
FAMILY_AXIS_LABELS = {"score": "score (at most 1)", "error": "error (target units)", "other": "other metrics"}
FAMILY_STYLES = {"score": "-", "error": "--", "other": ":"}
BEST_STYLE = {"color": "0.3", "linestyle": ":", "linewidth": 1.3}


# -- reading a run --------------------------------------------------------------------------------
def read_log(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl``; a missing folder or file, or a line that is
    not an epoch record, is a UsageError naming the file (a last line cut short by a crash is skipped)."""
    run = Path(run_dir)
    path = run / "metrics.jsonl"
    if not run.exists():
        raise UsageError(f"{path} does not exist: there is no run folder {run}")
    if not run.is_dir():
        raise UsageError(f"{run} is a file, not a run folder")
    if not path.is_file():
        raise UsageError(f"{path} does not exist: {run} is not an mtmm run folder (written by `mtmm train`)")
    lines = [(number, line) for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if index == len(lines) - 1:
                continue  # a line being written, or cut short by a crash
            raise UsageError(f"{path}, line {number}: not a JSON epoch record") from None
        if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)
                and all(isinstance(record.get(key), dict) for key in LOG_KEYS[1:])):
            raise UsageError(f"{path}, line {number}: not an epoch record (expected the keys {', '.join(LOG_KEYS)})")
        records.append(record)
    if not records:
        raise UsageError(f"{path} holds no epoch yet: plot the run after its first epoch")
    return records


def read_run_settings(run_dir: str | Path) -> dict[str, str]:
    """``monitor`` (``train.monitor``, default ``loss``) and ``weighting`` (``model.weighting.name``) from a
    run's ``config.yaml``, read leniently: a plot needs neither the data set nor the plugins of the run."""
    settings = {"monitor": "loss", "weighting": ""}
    try:
        import yaml

        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except Exception:  # noqa: BLE001 - a missing or damaged config.yaml only costs the labels
        return settings
    if isinstance(config, dict):
        train, model = config.get("train"), config.get("model")
        if isinstance(train, dict) and isinstance(train.get("monitor"), str):
            settings["monitor"] = train["monitor"]
        weighting = model.get("weighting") if isinstance(model, dict) else None
        if isinstance(weighting, dict) and isinstance(weighting.get("name"), str):
            settings["weighting"] = weighting["name"]
    return settings


def best_epoch(records: list[dict], monitor: str = "loss") -> tuple[int, float] | None:
    """The epoch whose validation ``monitor`` is best and its value, as the trainer picks it (the first of
    equal values, by :func:`mtmm_core.evaluation.is_better`); None when no record has a number for it.
    A metric whose direction is unknown (its plugin is not installed) raises UnknownComponentError."""
    from mtmm_core.evaluation import is_better

    best: float | None = None
    epoch = None
    for record in records:
        value = _number(record["validation"].get(monitor))
        if not math.isnan(value) and is_better(monitor, value, best):
            best, epoch = value, record["epoch"]
    return None if epoch is None else (epoch, best)


def metric_family(name: str, values: Iterable[float]) -> str:
    """``score`` (a built-in 0..1 score, or any metric whose values all lie in [0, 1]), ``error`` (mae,
    rmse, or another lower-is-better metric) or ``other`` (a higher-is-better metric beyond [0, 1], or
    one whose plugin is not installed)."""
    if name in SCORE_METRICS:
        return "score"
    if name in ERROR_METRICS:
        return "error"
    finite = [v for v in values if math.isfinite(v)]
    if finite and all(0.0 <= v <= 1.0 for v in finite):
        return "score"
    try:
        from mtmm_core.metrics import higher_is_better

        return "other" if higher_is_better(name) else "error"
    except MtmmError:
        return "other"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _tasks(records: list[dict]) -> list[str]:
    """The tasks of the log, in the order the trainer wrote them."""
    tasks = list(records[0]["train"])
    for record in records:
        for key in [*record["train"], *record["task_weights"]]:
            if key not in tasks:
                tasks.append(key)
        for key in record["validation"]:
            task = key.rpartition(".")[0]
            if task and task not in tasks:
                tasks.append(task)
    return tasks


def _task_metrics(records: list[dict], task: str) -> list[str]:
    names: list[str] = []
    for record in records:
        for key in record["validation"]:
            owner, _, name = key.rpartition(".")
            if owner == task and name != "loss" and name not in names:
                names.append(name)
    return names


# -- the training figure --------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no window); an ImportError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("mtmm plot and mtmm evaluate --plot need matplotlib: pip install 'mtmm[plot]'") from error
    return plt


def _style() -> dict[str, Any]:
    return {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
            "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 10}


def _grid_columns(blocks: int) -> int:
    """Blocks (two panels each) per row: landscape for a screen, at most 4 across."""
    return min(blocks, 2 if blocks <= 4 else 3 if blocks <= 9 else 4)


def training_figure(records: list[dict], monitor: str = "loss", title: str = "", weighting: str = ""):
    """The Figure of :func:`plot_run` for the epoch ``records`` of ``metrics.jsonl``.

    Panels (each Axes has a title; twin axes share their panel's title): ``total loss`` and
    ``task weights``, then per task ``<task>: loss`` and ``<task>: validation metrics``. A metric
    family beyond the first of a panel goes on a twin axis whose label names the family.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    tasks = _tasks(records)
    epochs = [record["epoch"] for record in records]
    try:
        best = best_epoch(records, monitor)
        unknown_direction = False
    except MtmmError:  # a plugin's metric whose plugin is not installed here
        best, unknown_direction = None, True
    blocks = 1 + len(tasks)
    columns = _grid_columns(blocks)
    rows = math.ceil(blocks / columns)
    with plt.rc_context(_style()):
        figure = plt.figure(figsize=(4.6 * columns, 4.9 * rows + 0.5), layout="constrained")
        grid = figure.add_gridspec(2 * rows, columns)
        panels = []
        for index in range(blocks):
            row, column = divmod(index, columns)
            upper = figure.add_subplot(grid[2 * row, column])
            lower = figure.add_subplot(grid[2 * row + 1, column], sharex=upper)
            lower.set_xlabel("epoch")
            panels.append((upper, lower))
        marker = {"marker": "o", "markersize": 3} if len(epochs) <= 30 else {}

        def line(axis, values, **style):
            return axis.plot(epochs, values, **{**marker, **style})[0]

        def column(section, key):
            return [_number(record[section].get(key)) for record in records]

        # the first block: the total loss (and the monitored metric), the task weights
        total_axis, weights_axis = panels[0]
        train_total = [sum(_number(record["train"].get(task)) for task in tasks) for record in records]
        handles = [line(total_axis, train_total, color="C0", label="train (sum)"),
                   line(total_axis, column("validation", "loss"), color="C1", label="validation (sum)")]
        _loss_scale(total_axis, train_total + column("validation", "loss"))
        total_axis.set(title="total loss (sum over tasks)", ylabel="loss")
        axes = [total_axis]
        if monitor != "loss":
            monitored_axis = total_axis.twinx()
            values = column("validation", monitor)
            handles.append(line(monitored_axis, values, color="C2", linestyle="--",
                                label=f"{monitor} (right axis)"))
            monitored_axis.set(ylabel=monitor)
            axes.append(monitored_axis)
            total_axis.set_title(f"total loss and monitored {monitor}")
        if best is not None:
            best_axis = axes[-1]
            handles.append(best_axis.plot([best[0]], [best[1]], marker="*", markersize=11, color="C3",
                                          linestyle="none", label=f"best {monitor} {best[1]:.4g}")[0])
        _finish(total_axis, handles, best)
        weights_handles = [line(weights_axis, column("task_weights", task), color=f"C{i % 10}", label=task)
                           for i, task in enumerate(tasks)]
        weights_axis.set(title=f"task weights ({weighting})" if weighting else "task weights", ylabel="weight")
        _finish(weights_axis, weights_handles, best)

        # one block per task: its losses, its validation metrics by family
        for task, (loss_axis, metrics_axis) in zip(tasks, panels[1:]):
            train, validation = column("train", task), column("validation", f"{task}.loss")
            handles = [line(loss_axis, train, color="C0", label="train"),
                       line(loss_axis, validation, color="C1", label="validation")]
            _loss_scale(loss_axis, train + validation)
            names = _task_metrics(records, task)
            regression = any(name in ERROR_METRICS for name in names)
            loss_axis.set(title=f"{task}: loss",
                          ylabel="loss (standardised target)" if regression else "loss")
            _finish(loss_axis, handles, best)
            families: dict[str, list[str]] = {}
            for name in names:
                families.setdefault(metric_family(name, column("validation", f"{task}.{name}")), []).append(name)
            order = [family for family in ("score", "error", "other") if family in families]
            handles, colour = [], 0
            for position, family in enumerate(order):
                axis = metrics_axis if position == 0 else metrics_axis.twinx()
                if position > 1:  # a third family: its own spine further right
                    axis.spines["right"].set_position(("axes", 1.0 + 0.2 * (position - 1)))
                side = "" if position == 0 else " (right axis)"
                values_of_family = []
                for name in families[family]:
                    values = column("validation", f"{task}.{name}")
                    values_of_family += values
                    handles.append(line(axis, values, color=f"C{colour % 10}", linestyle=FAMILY_STYLES[family],
                                        label=f"{name}{side}"))
                    colour += 1
                axis.set_ylabel(FAMILY_AXIS_LABELS[family])
                if family == "score":
                    _score_limits(axis, values_of_family)
            metrics_axis.set_title(f"{task}: validation metrics")
            if not names:
                metrics_axis.text(0.5, 0.5, "no validation metric", ha="center", va="center",
                                  transform=metrics_axis.transAxes, color="0.4")
            _finish(metrics_axis, handles, best)

        for upper, lower in panels:
            for axis in (upper, lower):
                if len(set(epochs)) <= 12:
                    axis.set_xticks(sorted(set(epochs)))
                else:
                    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
                if len(epochs) == 1:
                    axis.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        if best is not None:
            summary = f"best epoch {best[0]} by validation {monitor} ({best[1]:.4g}, dotted line)"
        elif unknown_direction:
            summary = f"best epoch not marked: the plugin of metric {monitor!r} is not installed"
        else:
            summary = f"best epoch not marked: validation {monitor} is never a number in the log"
        figure.suptitle(f"{title}{': ' if title else ''}{len(records)} epoch{'s' * (len(records) != 1)}; {summary}")
    return figure


def _loss_scale(axis, values: list[float]) -> None:
    """A log scale when every loss is positive, labelled with plain numbers (2.3, not 2.3 x 10^0)."""
    from matplotlib.ticker import LogFormatter

    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0:
        axis.set_yscale("log")

        class Plain(LogFormatter):  # LogFormatter picks which ticks to label; the label is written plainly
            def __call__(self, x, pos=None):
                return f"{x:.4g}" if super().__call__(x, pos) else ""

        axis.yaxis.set_major_formatter(Plain(labelOnlyBase=False))
        axis.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _score_limits(axis, values: list[float]) -> None:
    """Scores up to 1 on their own range (r2 may be far below 0 early on: the axis stops at -1)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    low, high = max(-1.0, min(finite)), min(1.0, max(finite))
    pad = max(0.02, 0.06 * (high - low))
    axis.set_ylim(max(-1.0, low - pad), min(1.0 + pad / 2, high + pad))


def _finish(axis, handles: list, best: tuple[int, float] | None) -> None:
    """The best-epoch line, a grid, and the legend below the panel, where it covers no curve."""
    from matplotlib.transforms import offset_copy

    if best is not None:
        handles = [*handles, axis.axvline(best[0], **BEST_STYLE, label=f"best epoch {best[0]}")]
    axis.grid(alpha=0.3)
    if handles:
        below = offset_copy(axis.transAxes, fig=axis.figure, y=-20 if axis.get_xlabel() == "" else -30,
                            units="points")
        axis.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below,
                    ncol=_legend_columns([handle.get_label() for handle in handles]), frameon=False,
                    handlelength=2.2, columnspacing=1.2)


def _legend_columns(labels: list[str]) -> int:
    """As many columns as fit under a panel about 60 characters wide."""
    longest = max(len(label) for label in labels) + 5
    return max(1, min(3, len(labels), 60 // longest))


def _image_formats() -> dict[str, str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return FigureCanvasAgg.get_supported_filetypes()


def output_path(out: str | Path | None, run_dir: str | Path, formats: dict[str, str] | None = None,
                 default: str = "training.png", flag: str = "--out") -> Path:
    """Where to write a figure: ``out`` (a file; its format from the suffix, .png when it has none)
    or ``RUN_DIR/<default>``. A folder, an unknown suffix or a file in the way is a UsageError."""
    if out is None or out == "":
        return Path(run_dir) / default
    out = check_output_file(out, flag=flag, example=default)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    else:
        formats = _image_formats() if formats is None else formats
        if out.suffix[1:].lower() not in formats:
            raise UsageError(f"{flag} {out}: unknown image format {out.suffix!r}; valid: "
                             f"{', '.join('.' + name for name in sorted(formats))}")
    return out


def _save(figure, out: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=100)
    finally:
        plt.close(figure)
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the training figure (:func:`training_figure`) of a run to ``out`` (default
    ``RUN_DIR/training.png``); returns its path."""
    pyplot()
    records = read_log(run_dir)
    out = output_path(out, run_dir)
    settings = read_run_settings(run_dir)
    figure = training_figure(records, settings["monitor"], title=str(run_dir), weighting=settings["weighting"])
    return _save(figure, out)
