"""PyTorch fallback of the fused multitask loss: the standard losses, masked, then weighted.

No host synchronisation: masked samples are neutralised (their targets replaced, their
terms zeroed) instead of being gathered out, and the count of labelled samples stays
on the device. Half-precision predictions are upcast, so every sum runs in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .multitask_loss_validate import MultitaskArgs


def _labelled_rows(mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """Bool ``[B]``: True where the sample carries a label for this task."""
    return torch.ones(batch, dtype=torch.bool, device=device) if mask is None else mask


def cross_entropy_mean(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, ignore_index: int,
                       dtype: torch.dtype) -> torch.Tensor:
    """Mean cross entropy of logits ``[B, C]`` and classes ``[B]`` over labelled rows; 0 when none is."""
    labelled = _labelled_rows(mask, target.shape[0], target.device) & (target != ignore_index)
    safe_target = target.long().masked_fill(~labelled, ignore_index)
    total = F.cross_entropy(logits.to(dtype), safe_target, ignore_index=ignore_index, reduction="sum")
    return total / labelled.sum().clamp_min(1).to(dtype)


def elementwise_mean(kind: str, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                     dtype: torch.dtype) -> torch.Tensor:
    """Mean bce / mse / l1 / huber of ``[B]`` or ``[B, K]`` over the elements of labelled rows."""
    x, y = pred.to(dtype), target.to(dtype)
    if mask is not None:
        row_mask = mask.view(-1, *([1] * (x.dim() - 1)))  # [B] -> [B, 1] for [B, K]
        y = y.masked_fill(~row_mask, 0.0)  # an unlabelled sample's target may be anything, NaN included
    if kind == "bce":
        terms = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    elif kind == "mse":
        terms = F.mse_loss(x, y, reduction="none")
    elif kind == "l1":
        terms = F.l1_loss(x, y, reduction="none")
    else:
        terms = F.huber_loss(x, y, reduction="none", delta=1.0)
    per_row = x.numel() // max(x.shape[0], 1)
    if mask is None:
        return terms.sum() / max(x.numel(), 1)
    terms = terms.masked_fill(~row_mask, 0.0)
    return terms.sum() / (mask.sum().clamp_min(1) * per_row).to(dtype)


def weighted_total(per_task: torch.Tensor, task_weights: torch.Tensor,
                   log_vars: torch.Tensor | None) -> torch.Tensor:
    """``sum_i w_i L_i``, or with ``log_vars`` ``s``: ``sum_i c_i exp(-s_i) L_i + 0.5 s_i``. All ``[T]`` -> ``[]``."""
    if log_vars is None:
        return (task_weights * per_task).sum()
    s = log_vars.to(per_task.dtype)
    return (task_weights * torch.exp(-s) * per_task + 0.5 * s).sum()


def multitask_loss_torch(a: MultitaskArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted total ``[]`` and per-task losses ``[T]`` (``a.loss_dtype``), differentiable everywhere."""
    losses = []
    for pred, target, kind, mask in zip(a.preds, a.targets, a.kinds, a.masks):
        if kind == "cross_entropy":
            losses.append(cross_entropy_mean(pred, target, mask, a.ignore_index, a.loss_dtype))
        else:
            losses.append(elementwise_mean(kind, pred, target, mask, a.loss_dtype))
    per_task = torch.stack(losses)
    return weighted_total(per_task, a.task_weights, a.log_vars), per_task
