"""Public entry point :func:`cross_modal_attention` and backend selection.

``backend="auto"`` picks the fused Triton kernel for CUDA tensors it supports and
the PyTorch fallback otherwise; the environment variable ``MTMM_KERNEL_BACKEND``
("auto", "triton" or "torch") overrides "auto". Triton is imported only when the
Triton backend is actually used, so ``import mtmm_kernels`` works without it.

The backend choice and the launch happen inside the operator ``mtmm::cross_modal_attention``
(:mod:`mtmm_kernels._ops`), so ``torch.compile(fullgraph=True)`` traces through a call:
the choice is then made once, at trace time.
"""

from __future__ import annotations

import torch

from . import _ops
from ._backend import BACKENDS, choose_backend, triton_available, triton_interpreting
from ._validate import AttentionArgs, validate_attention_args

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_HEAD_DIM = 128


def _triton_unsupported(a: AttentionArgs) -> str | None:
    """Why the Triton kernel cannot take these arguments, or None when it can."""
    if not triton_available():
        return "triton is not installed (or fails to import)"
    if a.q.device.type != "cuda" and not triton_interpreting():
        return f"tensors are on {a.q.device}; it needs CUDA tensors (or TRITON_INTERPRET=1 to run on CPU)"
    if a.q.dtype not in TRITON_DTYPES:
        return f"dtype {a.q.dtype} is not one of float16, bfloat16, float32"
    if a.q.shape[-1] > TRITON_MAX_HEAD_DIM:
        return f"head dim D={a.q.shape[-1]} exceeds {TRITON_MAX_HEAD_DIM}"
    return None


def resolve_backend(backend: str, a: AttentionArgs) -> str:
    """Turn the requested backend (after the environment override) into "triton" or "torch"."""
    return choose_backend(backend, a.q.device, lambda: _triton_unsupported(a))


def cross_modal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_lengths: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of queries from one modality over keys/values from another.

    Args:
        q: ``[B, H, Lq, D]`` queries.
        k, v: ``[B, H, Lk, D]`` keys and values (``Lk`` may differ from ``Lq``).
        key_lengths: integer ``[B]``; the first ``key_lengths[b]`` keys of sample ``b``
            are valid (fast path: no mask tensor, key blocks past it are skipped).
        key_padding_mask: bool ``[B, Lk]``, True = attend (any pattern). At most one
            of ``key_lengths`` and ``key_padding_mask``.
        scale: factor on ``q @ k^T``; defaults to ``D ** -0.5``.
        backend: "auto", "triton" or "torch" (see the module docstring).

    Returns:
        ``[B, H, Lq, D]`` in the dtype of ``q``. A sample with no valid key gives 0,
        and 0 gradients. Differentiable in ``q``, ``k`` and ``v``.

    Raises:
        ValueError: on mismatched shapes, dtypes or devices, bad masks or lengths, an
            unknown backend, or ``backend="triton"`` where the kernel cannot run.
    """
    a = validate_attention_args(q, k, v, key_lengths, key_padding_mask, scale)
    if not isinstance(backend, str):  # the operator takes a string; say what choose_backend would say
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if torch.jit.is_tracing():  # torch.jit.trace / ONNX export record the ATen ops, not an mtmm operator
        return _ops.cross_modal_attention_impl(a.q, a.k, a.v, a.key_lengths, a.key_padding_mask, a.scale, backend)
    return torch.ops.mtmm.cross_modal_attention(a.q, a.k, a.v, a.key_lengths, a.key_padding_mask, a.scale, backend)
