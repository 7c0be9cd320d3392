"""Cases, implementations and byte floors shared by the multitask-loss benchmarks."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from mtmm_core.losses import task_loss
from mtmm_kernels.multitask_loss import multitask_loss

#: Kinds and widths of tasks 2.. (task 1 is cross entropy with the case's class count).
OTHER_TASKS = [("bce", 4), ("mse", None), ("cross_entropy", 10), ("huber", 2), ("l1", None), ("bce", None),
               ("mse", 8)]


@dataclass(frozen=True)
class Case:
    tasks: int
    batch: int
    classes: int

    @property
    def name(self) -> str:
        return f"T{self.tasks}-B{self.batch}-C{self.classes}"


@dataclass
class Inputs:
    preds: list[torch.Tensor]
    targets: list[torch.Tensor]
    kinds: list[str]
    masks: list[torch.Tensor]


def make_inputs(case: Case, dtype: torch.dtype, device: str) -> Inputs:
    """Task 1: cross entropy over ``classes``; the others from OTHER_TASKS; 80% of samples labelled."""
    specs = [("cross_entropy", case.classes)] + OTHER_TASKS[: case.tasks - 1]
    preds, targets, kinds, masks = [], [], [], []
    for kind, width in specs:
        if kind == "cross_entropy":
            pred = torch.randn(case.batch, width, device=device)
            target = torch.randint(0, width, (case.batch,), device=device)
        else:
            shape = (case.batch,) if width is None else (case.batch, width)
            pred = torch.randn(shape, device=device)
            target = torch.rand(shape, device=device)
        preds.append(pred.to(dtype).requires_grad_())
        targets.append(target)
        kinds.append(kind)
        masks.append(torch.rand(case.batch, device=device) < 0.8)
    return Inputs(preds, targets, kinds, masks)


def eager(x: Inputs) -> torch.Tensor:
    """The eager baseline: mtmm_core.losses.task_loss per task, then the equal-weight sum."""
    return torch.stack([task_loss(k, p, t, m) for k, p, t, m in zip(x.kinds, x.preds, x.targets, x.masks)]).sum()


def fused(x: Inputs) -> torch.Tensor:
    return multitask_loss(x.preds, x.targets, x.kinds, task_masks=x.masks)[0]


def implementations() -> dict[str, Callable[[Inputs], torch.Tensor]]:
    return {"fused": fused, "eager": eager}


def step(fn: Callable[[Inputs], torch.Tensor], x: Inputs, backward: bool) -> None:
    total = fn(x)
    if backward:
        torch.autograd.grad(total, x.preds)


def floor_bytes(x: Inputs, backward: bool) -> int:
    """Read predictions, targets and masks once; with backward also write each prediction's gradient once."""
    read = sum(t.numel() * t.element_size() for group in (x.preds, x.targets, x.masks) for t in group)
    written = sum(p.numel() * p.element_size() for p in x.preds) if backward else 0
    return read + written


def time_ms(fn: Callable[[], None], reps: int, device: str) -> float:
    """Median wall time of ``fn`` in milliseconds after one warm-up call."""
    fn()
    samples = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def peak_memory_mb(fn: Callable[[], None], device: str) -> float | None:
    """Peak CUDA memory allocated during ``fn`` above what was allocated before (None on CPU)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20
