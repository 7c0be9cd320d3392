"""Shared pieces of the attention benchmarks: shapes, inputs, the compared implementations, metrics.

Shapes follow ``/work/shared/notes/kernels.md``: queries from one modality, keys and
values from another, valid key lengths drawn per sample between 50% and 100% of Lk.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from mtmm_kernels import cross_modal_attention


@dataclass(frozen=True)
class Shape:
    """One benchmark problem: q ``[B, H, Lq, d]``, k/v ``[B, H, Lk, d]``."""

    name: str
    B: int
    H: int
    Lq: int
    Lk: int
    d: int

    def with_batch(self, B: int) -> Shape:
        return Shape(self.name, B, self.H, self.Lq, self.Lk, self.d)


SHAPES = {
    "T": Shape("T", 64, 12, 32, 49, 64),
    "S": Shape("S", 32, 8, 77, 257, 64),
    "M": Shape("M", 32, 16, 128, 577, 64),
    "L": Shape("L", 64, 16, 256, 1024, 128),
}


@dataclass
class Inputs:
    """Leaf tensors with grad, the upstream gradient, and both forms of the key mask."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor
    key_lengths: torch.Tensor  # int64 [B]
    key_mask: torch.Tensor  # bool [B, Lk], True = attend


def make_inputs(shape: Shape, dtype: torch.dtype, device: str, min_valid: float = 0.5, seed: int = 0) -> Inputs:
    """Random inputs; per-sample valid key lengths uniform in ``[min_valid * Lk, Lk]``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H, Lq, Lk, d = shape.B, shape.H, shape.Lq, shape.Lk, shape.d

    def rand(L: int) -> torch.Tensor:
        return torch.randn(B, H, L, d, generator=g).to(device=device, dtype=dtype).requires_grad_()

    q, k, v = rand(Lq), rand(Lk), rand(Lk)
    dout = torch.randn(B, H, Lq, d, generator=g).to(device=device, dtype=dtype)
    low = max(1, math.ceil(min_valid * Lk))
    lengths = torch.randint(low, Lk + 1, (B,), generator=g).to(device)
    mask = torch.arange(Lk, device=device)[None, :] < lengths[:, None]
    return Inputs(q, k, v, dout, lengths, mask)


# ----------------------------------------------------------------------------- implementations


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """What a user writes by hand: matmul, mask, softmax, matmul (``[B, H, Lq, d]`` out)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` given the same key-padding mask (bool ``[B, 1, 1, Lk]``)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])


def implementations(device: str, with_compile: bool = True) -> dict[str, Callable[[Inputs], torch.Tensor]]:
    """Name -> ``fn(inputs) -> output``; "fused" is the Triton kernel on CUDA, the fallback elsewhere."""
    fused_backend = "triton" if device == "cuda" else "torch"
    impls: dict[str, Callable[[Inputs], torch.Tensor]] = {
        "fused": lambda x: cross_modal_attention(x.q, x.k, x.v, key_lengths=x.key_lengths, backend=fused_backend),
        "eager": lambda x: eager_attention(x.q, x.k, x.v, x.key_mask),
        "sdpa": lambda x: sdpa_attention(x.q, x.k, x.v, x.key_mask),
    }
    if with_compile:
        compiled = torch.compile(eager_attention, dynamic=False)
        impls["compile"] = lambda x: compiled(x.q, x.k, x.v, x.key_mask)
    return impls


def forward_backward(fn: Callable[[Inputs], torch.Tensor], x: Inputs) -> None:
    """One forward and backward; ``autograd.grad`` so that nothing accumulates in ``.grad``."""
    out = fn(x)
    torch.autograd.grad(out, (x.q, x.k, x.v), x.dout)


def forward_only(fn: Callable[[Inputs], torch.Tensor], x: Inputs) -> None:
    with torch.no_grad():
        fn(x)


def sdpa_backend(x: Inputs) -> str:
    """Which SDPA backend runs for these inputs, read from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sdpa_attention(x.q, x.k, x.v, x.key_mask)
    names = " ".join(e.key for e in prof.key_averages())
    for op, label in (
        ("_scaled_dot_product_flash_attention_for_cpu", "flash (cpu)"),
        ("_scaled_dot_product_flash_attention", "flash"),
        ("_scaled_dot_product_efficient_attention", "memory-efficient"),
        ("_scaled_dot_product_cudnn_attention", "cudnn"),
        ("_scaled_dot_product_attention_math", "math"),
    ):
        if op in names:
            return label
    return "unknown"


# ----------------------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(step: Callable[[], None], device: str, reps: int, warmup: int = 5) -> float:
    """Median wall time of ``step`` in milliseconds (synchronising the GPU around each call)."""
    for _ in range(warmup):
        step()
    _sync(device)
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        _sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def peak_memory_mb(step: Callable[[], None], device: str) -> float | None:
    """Extra peak CUDA memory of one call above what was allocated before, in MiB (None on CPU)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def flops(shape: Shape, backward: bool) -> float:
    """Nominal FLOPs over the padded Lk: forward ``4 B H Lq Lk d``, backward 2.5x that."""
    fwd = 4.0 * shape.B * shape.H * shape.Lq * shape.Lk * shape.d
    return fwd * (3.5 if backward else 1.0)


def floor_bytes(shape: Shape, element_size: int, backward: bool) -> float:
    """HBM bytes floor: read Q, K, V and write O and the log-sum-exp (+ the backward's traffic)."""
    Lq, Lk, d, e = shape.Lq, shape.Lk, shape.d, element_size
    per_head = (2 * Lq + 2 * Lk) * d * e + 4 * Lq
    if backward:
        per_head += (4 * Lq + 4 * Lk) * d * e + 8 * Lq
    return float(shape.B * shape.H * per_head)


def copy_bandwidth_gbs(device: str, megabytes: int = 512) -> float:
    """Measured copy bandwidth (read + write bytes per second, GB/s): the device's practical ceiling."""
    n = megabytes * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, reps=10)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
