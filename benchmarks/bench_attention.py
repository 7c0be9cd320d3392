"""pytest-benchmark cases for cross-modal attention (not part of the test suite).

    pytest benchmarks/bench_attention.py                       # all shapes
    pytest benchmarks/bench_attention.py -k "T and fwd"        # a subset
    pytest benchmarks/bench_attention.py --benchmark-json out.json

Shapes T, S, M, L of the kernel notes, forward and forward+backward, for "fused"
(the Triton kernel on CUDA, the PyTorch fallback on CPU), "eager", "sdpa" and
"compile". Without CUDA the batch is cut to 1 (``MTMM_BENCH_BATCH`` overrides it)
and the Triton kernel is not timed. ``extra_info`` records FLOPs, floor bytes and
the SDPA backend; ``attention_table.py`` prints the derived rates.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
from attention_common import (
    SHAPES,
    Inputs,
    floor_bytes,
    flops,
    forward_backward,
    forward_only,
    implementations,
    make_inputs,
    sdpa_backend,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
IMPLS = implementations(DEVICE)


@functools.lru_cache(maxsize=4)
def _inputs(shape_name: str) -> Inputs:
    shape = SHAPES[shape_name]
    default_batch = shape.B if DEVICE == "cuda" else 1
    return make_inputs(shape.with_batch(int(os.environ.get("MTMM_BENCH_BATCH", default_batch))), DTYPE, DEVICE)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_attention(benchmark, shape_name: str, mode: str, impl: str) -> None:
    x = _inputs(shape_name)
    shape = SHAPES[shape_name].with_batch(x.q.shape[0])
    fn, backward = IMPLS[impl], mode == "fwd+bwd"
    step = (lambda: forward_backward(fn, x)) if backward else (lambda: forward_only(fn, x))

    def timed() -> None:
        step()
        _sync()

    benchmark.extra_info.update(
        device=DEVICE,
        dtype=str(DTYPE),
        B=shape.B,
        flops=flops(shape, backward),
        floor_bytes=floor_bytes(shape, x.q.element_size(), backward),
        fused_is="triton" if DEVICE == "cuda" else "torch fallback (Triton not timed)",
    )
    if impl == "sdpa":
        benchmark.extra_info["sdpa_backend"] = sdpa_backend(x)
    timed()  # compile / autotune outside the measurement
    benchmark(timed)
