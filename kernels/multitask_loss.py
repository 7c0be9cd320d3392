"""Public entry point :func:`multitask_loss`: every task's loss and their weighting in one call.

``backend="auto"`` runs the fused Triton kernel when the predictions are CUDA tensors
and triton imports, the PyTorch fallback otherwise; the environment variable
``MTMM_KERNEL_BACKEND`` ("auto", "triton" or "torch") overrides "auto".
``backend="triton"`` also runs on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
Triton is imported only when its backend is used.

The backend choice and the launch happen inside the operator ``mtmm::multitask_loss``
(:mod:`mtmm_kernels._ops`), so ``torch.compile(fullgraph=True)`` traces through a call:
the choice is then made once, at trace time.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import _ops
from ._backend import BACKENDS, choose_backend, triton_available, triton_interpreting
from .multitask_loss_validate import MultitaskArgs, validate_multitask_args

#: Prediction dtypes the Triton kernel takes (float64 always runs on the PyTorch fallback).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _triton_unsupported(a: MultitaskArgs) -> str | None:
    """Why the Triton kernel cannot take these arguments, or None when it can."""
    if not triton_available():
        return "triton is not installed (or fails to import)"
    device = a.preds[0].device
    if device.type != "cuda" and not triton_interpreting():
        return f"tensors are on {device}; it needs CUDA tensors (or TRITON_INTERPRET=1 to run on CPU)"
    for i, pred in enumerate(a.preds):
        if pred.dtype not in TRITON_DTYPES:
            return f"task {i} has predictions of dtype {pred.dtype}, not float16, bfloat16 or float32"
    return None


def resolve_multitask_backend(backend: str, a: MultitaskArgs) -> str:
    """Turn the requested backend (after the environment override) into "triton" or "torch"."""
    return choose_backend(backend, a.preds[0].device, lambda: _triton_unsupported(a))


def multitask_loss(
    preds: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    kinds: Sequence[str],
    *,
    weights: torch.Tensor | Sequence[float] | None = None,
    log_vars: torch.Tensor | None = None,
    task_masks: Sequence[torch.Tensor | None] | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every task's mean loss and their weighted total, in one fused launch on the Triton backend.

    Args:
        preds: one tensor per task: logits ``[B, C]`` for "cross_entropy"; ``[B]`` or
            ``[B, K]`` for "bce" (logits), "mse", "l1" and "huber" (delta 1).
            float16, bfloat16, float32 or float64; tasks may differ in B and dtype.
        targets: one per task: int classes ``[B]`` for cross entropy, else floats of the
            prediction's shape.
        kinds: one loss kind per task.
        weights: ``[T]`` static weights ``w_i`` (default 1): ``total = sum_i w_i L_i``. With
            ``log_vars`` they are the multipliers ``c_i`` (default 0.5, Kendall's common
            form; 1 gives his classification form). Not differentiated.
        log_vars: ``[T]`` learnable ``s_i = log sigma_i^2``:
            ``total = sum_i c_i exp(-s_i) L_i + 0.5 s_i``, differentiable in ``s``.
        task_masks: per task None or bool ``[B]``; False = the sample has no label for
            that task (its target may hold anything).
        ignore_index: cross-entropy targets equal to it count as unlabelled.
        backend: "auto", "triton" or "torch" (see the module docstring).

    Returns:
        ``(total [], per_task [T])``: the weighted total and the unweighted loss of each
        task (mean over its labelled samples, and for ``[B, K]`` over ``K``; exactly 0 for a
        task with no labelled sample). float32, or float64 when a prediction is float64.
        Both are differentiable in every prediction and in ``log_vars``; gradients come
        back in each prediction's dtype.

    Raises:
        ValueError: naming the task index and the problem: unknown kind, shape or dtype
            mismatch, class index out of range, lists of different lengths, bad weights,
            unknown backend, or ``backend="triton"`` where the kernel cannot run.
    """
    a = validate_multitask_args(preds, targets, kinds, weights, log_vars, task_masks, ignore_index)
    if not isinstance(backend, str):  # the operator takes a string; say what choose_backend would say
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    args = (list(a.preds), list(a.targets), list(a.kinds), list(a.masks), a.task_weights, a.log_vars, a.ignore_index,
            backend)
    if torch.jit.is_tracing():  # torch.jit.trace / ONNX export record the ATen ops, not an mtmm operator
        return _ops.multitask_loss_impl(*args)
    return torch.ops.mtmm.multitask_loss(*args)
