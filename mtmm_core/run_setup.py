"""What a training run sets up around its loop: the device, CPU threads, seeds, the learning-rate
schedule and the optional TensorBoard mirror of each epoch's record (used by :mod:`mtmm_core.trainer`)."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def choose_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_threads(requested: int) -> int:
    """Torch's CPU thread count: ``requested`` when > 0; else ``OMP_NUM_THREADS`` when set; else the
    cores this process may run on (``os.sched_getaffinity``: a container's or ``taskset``'s limit, not the
    machine's) shared among the processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``)."""
    if requested > 0:
        return requested
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, cores // max(1, int(local) if local.isdigit() else 1))


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def tensorboard_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardLog:
    """Mirrors each epoch's ``metrics.jsonl`` record to TensorBoard in ``log_dir`` when tensorboard is
    installed (``writer_class()`` gives its ``SummaryWriter``, or None); does nothing otherwise. The
    writer is created on the first record."""

    def __init__(self, log_dir: Path, writer_class: Callable[[], Any] = tensorboard_writer_class):
        self.log_dir, self._writer_class = log_dir, writer_class
        self._writer: Any = None  # created on the first record; False when tensorboard is absent

    def log(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            writer_class = self._writer_class()
            self._writer = False if writer_class is None else writer_class(log_dir=str(self.log_dir))
        if self._writer is False:
            return
        for section in ("train", "validation", "task_weights"):
            for key, value in record[section].items():
                self._writer.add_scalar(f"{section}/{key}", value, record["epoch"])
        self._writer.add_scalar("lr", record["lr"], record["epoch"])
        if "regularization" in record:
            self._writer.add_scalar("regularization", record["regularization"], record["epoch"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None
