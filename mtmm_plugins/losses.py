"""Built-in task losses, registered through the same ``register_losses`` hook a plugin uses.

Each is ``loss(prediction, target, mask) -> Tensor []`` (see :mod:`mtmm_core.losses`). The
ones with ``fused_kind`` are computed together by ``mtmm_kernels.multitask_loss`` when a
model trains; their functions here are the eager equivalents.
"""

from __future__ import annotations

import mtmm_core
from mtmm_core import losses


@mtmm_core.hookimpl
def register_losses(register):
    register("cross_entropy", losses.cross_entropy, fused_kind="cross_entropy", ignore_index=losses.IGNORE_INDEX)
    register("bce", losses.bce, fused_kind="bce")
    register("mse", losses.mse, fused_kind="mse")
    register("l1", losses.l1, fused_kind="l1")
    register("huber", losses.huber, fused_kind="huber")
    register("contrastive", losses.contrastive, needs_target=False)
