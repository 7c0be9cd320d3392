"""``mtmm plot RUN_DIR``: per-task training losses, validation metrics and task weights over epochs."""

from __future__ import annotations

import json
from pathlib import Path

from mtmm_core.config import check_output_file
from mtmm_core.errors import UsageError

LOG_KEYS = ("epoch", "train", "validation", "task_weights")


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


def _output_path(out: str | Path | None, run_dir: str | Path, formats: dict[str, str]) -> Path:
    """Where to write the figure: ``out`` (a file; its format from the suffix, .png when it has none)
    or ``RUN_DIR/training.png``. A folder, an unknown suffix or a file in the way is a UsageError."""
    if out is None:
        return Path(run_dir) / "training.png"
    out = check_output_file(out, example="training.png")
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    elif out.suffix[1:].lower() not in formats:
        raise UsageError(f"--out {out}: unknown image format {out.suffix!r}; valid: "
                         f"{', '.join('.' + name for name in sorted(formats))}")
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a PNG with three panels (train losses, validation metrics, task weights); returns its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("mtmm plot needs matplotlib: pip install 'mtmm[plot]'") from error
    records = read_log(run_dir)
    epochs = [r["epoch"] for r in records]
    figure, (losses, metrics, weights) = plt.subplots(1, 3, figsize=(16, 4.5))
    try:
        out = _output_path(out, run_dir, figure.canvas.get_supported_filetypes())
    except UsageError:
        plt.close(figure)
        raise
    for task in records[0]["train"]:
        losses.plot(epochs, [r["train"][task] for r in records], label=task)
    losses.set(title="training loss per task", xlabel="epoch", yscale="log")
    for key in records[0]["validation"]:
        if key != "loss" and not key.endswith(".loss"):
            metrics.plot(epochs, [r["validation"][key] for r in records], label=key)
    metrics.set(title="validation metrics", xlabel="epoch")
    for task in records[0]["task_weights"]:
        weights.plot(epochs, [r["task_weights"][task] for r in records], label=task)
    weights.set(title="task weights", xlabel="epoch")
    for axis in (losses, metrics, weights):
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
