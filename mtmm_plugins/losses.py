"""Built-in task losses, registered through the same ``register_losses`` hook a plugin uses.

Each is ``loss(prediction, target, mask) -> Tensor []`` (see :mod:`mtmm_core.losses`). The
ones with ``fused_kind`` are computed together by ``mtmm_kernels.multitask_loss`` when a
model trains; their functions here are the eager equivalents. ``example(batch_size)`` gives
a random valid ``(prediction, target)`` and ``example_target(prediction)`` a target for a head's
prediction, for ``mtmm check-plugin``.
"""

from __future__ import annotations

import torch

import mtmm_core
from mtmm_core import losses


def class_logits(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 5), torch.randint(0, 5, (batch_size,))


def binary_logits(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 3), torch.randint(0, 2, (batch_size, 3)).float()


def values(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 3), torch.randn(batch_size, 3)


def similarities(batch_size: int) -> tuple[torch.Tensor, None]:
    return torch.randn(batch_size, batch_size), None


def class_targets(logits: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, logits.shape[1], logits.shape[:1])


def binary_targets(logits: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, logits.shape).float()


def value_targets(prediction: torch.Tensor) -> torch.Tensor:
    return torch.randn(prediction.shape)


@mtmm_core.hookimpl
def register_losses(register):
    register("cross_entropy", losses.cross_entropy, fused_kind="cross_entropy", ignore_index=losses.IGNORE_INDEX,
             example=class_logits, example_target=class_targets)
    register("bce", losses.bce, fused_kind="bce", example=binary_logits, example_target=binary_targets)
    register("mse", losses.mse, fused_kind="mse", example=values, example_target=value_targets)
    register("l1", losses.l1, fused_kind="l1", example=values, example_target=value_targets)
    register("huber", losses.huber, fused_kind="huber", example=values, example_target=value_targets)
    register("contrastive", losses.contrastive, needs_target=False, example=similarities)
