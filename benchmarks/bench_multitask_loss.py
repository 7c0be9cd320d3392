"""pytest-benchmark cases for the fused multitask loss (not part of the test suite).

    pytest benchmarks/bench_multitask_loss.py                  # all cases
    pytest benchmarks/bench_multitask_loss.py -k "T4 and fwd"  # a subset

Fused (the Triton kernel on CUDA; on CPU the PyTorch fallback, the Triton kernel is
not timed) against eager (``mtmm_core.losses.task_loss`` per task, then the sum), for
2, 4 and 8 tasks, batch 256 to 8192 and 10 to 32768 classes in task 1. Without CUDA the
largest cases are skipped. ``extra_info`` records the bytes floor.
"""

from __future__ import annotations

import functools

import pytest
import torch
from multitask_common import Case, Inputs, floor_bytes, implementations, make_inputs, step

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
CASES = [Case(t, b, c) for t in (2, 4, 8) for b in (256, 2048, 8192) for c in (10, 1000, 32768)]
CPU_MAX_LOGITS = 2**24  # skip cases with more logits than this on CPU


@functools.lru_cache(maxsize=2)
def _inputs(case: Case) -> Inputs:
    return make_inputs(case, DTYPE, DEVICE)


@pytest.mark.parametrize("impl", list(implementations()))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_multitask_loss(benchmark, case: Case, mode: str, impl: str) -> None:
    if DEVICE == "cpu" and case.batch * case.classes > CPU_MAX_LOGITS:
        pytest.skip("too large for a CPU run")
    x, backward = _inputs(case), mode == "fwd+bwd"

    def timed() -> None:
        step(implementations()[impl], x, backward)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(device=DEVICE, dtype=str(DTYPE), floor_bytes=floor_bytes(x, backward),
                                fused_is="triton" if DEVICE == "cuda" else "torch fallback (Triton not timed)")
    timed()
    benchmark(timed)
