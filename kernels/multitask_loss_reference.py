"""Float64 reference of the multitask loss, written from the formulas (for tests only).

Each loss is spelled out rather than taken from ``torch.nn.functional``, and unlabelled
samples are dropped by indexing, so the reference shares no code path with the backends.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .multitask_loss_validate import validate_multitask_args


def _per_element(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "bce":  # -y log sigmoid(x) - (1 - y) log(1 - sigmoid(x)), in its stable form
        return x.clamp_min(0) - x * y + torch.log1p(torch.exp(-x.abs()))
    d = x - y
    if kind == "mse":
        return d * d
    if kind == "l1":
        return d.abs()
    return torch.where(d.abs() < 1.0, 0.5 * d * d, d.abs() - 0.5)  # huber, delta 1


def multitask_loss_reference(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], kinds: Sequence[str],
                             *, weights: torch.Tensor | Sequence[float] | None = None,
                             log_vars: torch.Tensor | None = None,
                             task_masks: Sequence[torch.Tensor | None] | None = None,
                             ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`mtmm_kernels.multitask_loss`, computed in float64.

    Differentiable in the predictions and ``log_vars`` (pass float64 leaves to compare gradients).
    """
    a = validate_multitask_args(preds, targets, kinds, weights, log_vars, task_masks, ignore_index)
    losses = []
    for pred, target, kind, mask in zip(a.preds, a.targets, a.kinds, a.masks):
        x = pred.double()
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if mask is None else mask.clone()
        if kind == "cross_entropy":
            keep &= target != ignore_index
            rows = x[keep]
            picked = rows.gather(1, target[keep].long()[:, None]).squeeze(1)
            terms = torch.logsumexp(rows, dim=1) - picked
        else:
            terms = _per_element(kind, x[keep], target[keep].double())
        losses.append(terms.sum() / terms.numel() if terms.numel() else x.sum() * 0.0)
    per_task = torch.stack(losses)
    w = a.task_weights.double()
    if a.log_vars is None:
        return (w * per_task).sum(), per_task
    s = a.log_vars.double()
    return (w * torch.exp(-s) * per_task + 0.5 * s).sum(), per_task
