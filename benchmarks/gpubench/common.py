"""What every section uses: section names, the time budget, the context, JSON helpers and the timing."""

from __future__ import annotations

import argparse
import datetime
import math
import re
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

SECTIONS = ("environment", "ceilings", "correctness", "attention", "multitask_loss", "train_step", "pytest")
ENV_BACKEND = "MTMM_KERNEL_BACKEND"
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}


# ============================================================================= small utilities


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:limit]


def clean_json(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists, torch/numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


class Budget:
    """Seconds left of ``--time-budget``; sections and their items stop starting new work when it is spent."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def spent(self) -> bool:
        return self.left() <= 0

    def capped(self, seconds: float) -> "Budget":
        """A budget that is spent after ``seconds`` from now, or when this one is."""
        child = Budget(min(seconds, self.left()))
        return child


class Context:
    """What every section gets: arguments, device, timing settings, the report so far, and the budget."""

    def __init__(self, args: argparse.Namespace, device: str, budget: Budget, report: dict[str, Any]):
        self.args = args
        self.device = device
        self.cuda = device == "cuda"
        self.budget = budget
        self.report = report

    def log(self, message: str) -> None:
        print(f"[gpu_suite {self.budget.elapsed():6.0f}s] {message}", file=sys.stderr, flush=True)


# ============================================================================= timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median and spread of per-call times (ms)."""
    s = sorted(samples)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, max(0, int(round(p * (n - 1)))))]

    median = statistics.median(s)
    return {"median_ms": median, "mean_ms": statistics.fmean(s), "min_ms": s[0], "max_ms": s[-1],
            "p10_ms": q(0.1), "p90_ms": q(0.9), "iqr_ms": q(0.75) - q(0.25),
            "spread_pct": 100.0 * (q(0.9) - q(0.1)) / median if median > 0 else None, "reps": n}


def time_calls(fn: Callable[[], Any], device: str, reps: int, warmup: int, sample_ms: float = 1.0,
               max_inner: int = 200, inner: int | None = None) -> dict[str, Any]:
    """Per-call time of ``fn`` in ms: ``warmup`` calls, then ``reps`` samples of ``inner`` back-to-back calls.

    On CUDA each sample is bracketed by CUDA events (recorded on the current stream) and
    synchronised on its end event; on CPU by ``time.perf_counter``. ``inner`` (when None)
    makes a sample last about ``sample_ms``, from one timed call after the warm-up.
    """
    for _ in range(max(warmup, 0)):
        fn()
    sync(device)

    def one_sample(count: int) -> float:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(count):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / count
        began = time.perf_counter()
        for _ in range(count):
            fn()
        return (time.perf_counter() - began) * 1e3 / count

    if inner is None:
        estimate = one_sample(1)
        inner = max(1, min(max_inner, int(sample_ms / max(estimate, 1e-4))))
    samples = [one_sample(inner) for _ in range(max(reps, 1))]
    result = summarize(samples)
    result["inner"] = inner
    return result


def peak_extra_mib(fn: Callable[[], Any], device: str) -> float | None:
    """Peak CUDA memory of one call above what was allocated before it (MiB); None on CPU."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def cuda_kernels(fn: Callable[[], Any], device: str, top: int = 12) -> dict[str, Any] | None:
    """Number of GPU kernels one call of ``fn`` launches (profiler), and the most frequent names."""
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    counts: dict[str, int] = {}
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            name = event.name
            if name.startswith(("Memcpy", "Memset", "cudaMem")):
                continue
            counts[name] = counts.get(name, 0) + 1
    names = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return {"launches": sum(counts.values()), "distinct": len(counts),
            "top": [{"name": n[:160], "count": c} for n, c in names]}
