"""Per-task losses composed eagerly from torch.nn.functional, and the contrastive loss.

The model computes its supervised losses with ``mtmm_kernels.multitask_loss`` (all tasks
in one call); ``task_loss`` is the eager, one-task-at-a-time composition it is benchmarked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtmm_core.contracts import LOSS_KINDS

IGNORE_INDEX = -100


def task_loss(kind: str, prediction: torch.Tensor, target: torch.Tensor | None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss of one task over its labelled samples; 0 (with a graph) when none is labelled.

    ``prediction`` and ``target`` follow docs/plugins.md for ``kind``; ``mask`` ``[B]`` bool,
    False = no label for that sample. Cross entropy also skips targets equal to -100.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; valid kinds: {', '.join(LOSS_KINDS)}")
    batch = prediction.shape[0]
    valid = torch.ones(batch, dtype=torch.bool, device=prediction.device) if mask is None else mask.bool()
    if kind == "contrastive":
        return contrastive_loss(prediction, valid)
    if target is None:
        raise ValueError(f"loss kind {kind!r} needs a target")
    if kind == "cross_entropy":
        valid = valid & (target != IGNORE_INDEX)
    if not bool(valid.any()):
        return prediction.sum() * 0.0
    prediction, target = prediction[valid].float(), target[valid]
    if kind == "cross_entropy":
        return F.cross_entropy(prediction, target.long())
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(prediction, target.float())
    if kind == "mse":
        return F.mse_loss(prediction, target.float())
    if kind == "l1":
        return F.l1_loss(prediction, target.float())
    return F.huber_loss(prediction, target.float())


def contrastive_loss(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the valid samples of similarity ``logits`` ``[B, B]`` (pairs on the diagonal).

    ``valid`` ``[B]`` bool; fewer than two valid samples give 0.
    """
    index = valid.nonzero().squeeze(1)
    if index.numel() < 2:
        return logits.sum() * 0.0
    sub = logits[index][:, index].float()
    labels = torch.arange(index.numel(), device=logits.device)
    return 0.5 * (F.cross_entropy(sub, labels) + F.cross_entropy(sub.t(), labels))
