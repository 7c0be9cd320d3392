"""``mtmm plot RUN_DIR``: per-task training losses, validation metrics and task weights over epochs."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} an mtmm run folder?")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no epoch yet")
    return records


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
    out = Path(out) if out else Path(run_dir) / "training.png"
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
