"""Task losses: the built-in ones as plain functions, and how the model finds a head's loss.

A loss is registered through the ``register_losses`` hook (the built-ins by
``mtmm_plugins.losses``, like a plugin's) and named by a head's ``loss_kind``. Every loss
has one signature::

    loss(prediction [B, ...], target [B, ...] | None, mask [B] bool) -> Tensor []

the mean over the samples where ``mask`` is True, and ``0`` (still connected to the graph)
when none is. Metadata a loss may carry:

- ``needs_target`` (default True): False for a loss computed from the prediction alone
  (``contrastive``); it is then called with ``target=None``.
- ``ignore_index``: a target value that means "no label" (cross entropy's -100). The model
  folds it into ``mask`` before the call and into the task's presence flag.
- ``fused_kind``: set by mtmm's built-in losses only. Their tasks skip the function and go
  together through ``mtmm_kernels.multitask_loss`` (one fused launch on GPU); the function
  is the eager reference the kernel is benchmarked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtmm_core.registry import Component, is_builtin

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LossInfo:
    """What the model needs to know of a head's loss, looked up once when the model is built."""

    component: Component
    needs_target: bool
    ignore_index: int | None
    fused_kind: str | None  # a built-in kind for mtmm_kernels.multitask_loss, or None: call the function

    @property
    def label(self) -> str:
        """``loss 'ordinal' from mtmm-extra 0.3.0``: how messages name it."""
        c = self.component
        return f"loss {c.name!r} from {c.distribution} {c.version}".rstrip()


def loss_info(name: str) -> LossInfo:
    """The registered loss ``name`` (plain or ``distribution:name``) and its metadata.

    Raises ``UnknownComponentError`` (with the close names) or ``AmbiguousComponentError``.
    """
    from mtmm_core.components import get_component

    component = get_component("loss", name)
    metadata = component.metadata
    fused = metadata.get("fused_kind") if is_builtin(component) else None  # a plugin cannot claim the kernel
    return LossInfo(component, bool(metadata.get("needs_target", True)), metadata.get("ignore_index"), fused)


def check_loss_value(value: object, info: LossInfo, task: str) -> torch.Tensor:
    """``value`` if it is a scalar tensor, else a ValueError naming the loss and the task."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value
    got = f"shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    raise ValueError(f"{info.label} (task {task!r}) must return the mean loss as a scalar tensor [], got {got}")


def _labelled(prediction: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return mask.to(device=prediction.device, dtype=torch.bool), prediction.float()


def _masked_mean(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_sample`` ``[B]`` (or ``[B, K]``, averaged over K first) where ``mask`` ``[B]``; 0 if none.

    No host sync: masked entries are replaced (never multiplied), and the count is clamped."""
    if per_sample.dim() > 1:
        per_sample = per_sample.flatten(1).mean(dim=1)
    total = torch.where(mask, per_sample, 0.0).sum()
    return total / mask.sum().clamp_min(1)


def cross_entropy(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross entropy of class logits ``[B, C]`` against class indices ``[B]`` (int)."""
    mask, logits = _labelled(prediction, mask)
    mask = mask & (target != IGNORE_INDEX)
    classes = torch.where(mask, target.long(), 0)  # an unlabelled sample's target may hold anything
    return _masked_mean(F.cross_entropy(logits, classes, reduction="none"), mask)


def bce(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy of logits ``[B]`` or ``[B, K]`` against 0/1 floats of the same shape."""
    mask, logits = _labelled(prediction, mask)
    gold = torch.where(_rows(mask, logits), target.float(), 0.0)
    return _masked_mean(F.binary_cross_entropy_with_logits(logits, gold, reduction="none"), mask)


def mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``[B]`` or ``[B, K]`` values against floats of the same shape."""
    mask, values = _labelled(prediction, mask)
    return _masked_mean(torch.where(_rows(mask, values), values - target.float(), 0.0).square(), mask)


def l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of ``[B]`` or ``[B, K]`` values against floats of the same shape."""
    mask, values = _labelled(prediction, mask)
    return _masked_mean(torch.where(_rows(mask, values), values - target.float(), 0.0).abs(), mask)


def huber(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Huber loss (delta 1) of ``[B]`` or ``[B, K]`` values against floats of the same shape."""
    mask, values = _labelled(prediction, mask)
    gold = torch.where(_rows(mask, values), target.float(), values.detach())
    return _masked_mean(F.huber_loss(values, gold, reduction="none", delta=1.0), mask)


def contrastive(logits: torch.Tensor, target: None, mask: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the masked samples of similarity ``logits`` ``[B, B]`` (pairs on the diagonal).

    ``target`` is unused (None); fewer than two samples in ``mask`` give 0. No host sync: the other
    samples' rows and columns are replaced (never gathered out), so the mean runs over the masked
    samples' pairs only, whatever the rest holds.
    """
    valid = mask.to(device=logits.device, dtype=torch.bool)
    count = valid.sum()
    scores = torch.where(valid[:, None] & valid[None, :], logits.float(), float("-inf"))

    def one_direction(rows: torch.Tensor) -> torch.Tensor:  # mean over the masked rows of -log p(own pair)
        rows = torch.where(valid[:, None], rows, 0.0)  # a row left out: finite, and not counted below
        own = torch.log_softmax(rows, dim=1).diagonal()
        return -torch.where(valid, own, 0.0).sum() / count.clamp_min(1)

    value = 0.5 * (one_direction(scores) + one_direction(scores.t()))
    return torch.where(count >= 2, value, 0.0)


#: The built-in losses by name: the fused kernel's kinds, plus ``contrastive``.
BUILTIN_LOSSES = {"cross_entropy": cross_entropy, "bce": bce, "mse": mse, "l1": l1, "huber": huber,
                  "contrastive": contrastive}


def task_loss(kind: str, prediction: torch.Tensor, target: torch.Tensor | None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """One task's loss with the built-in loss ``kind``, eagerly: the baseline the fused kernel is
    benchmarked against. ``mask`` ``[B]`` bool (None: every sample); cross entropy also skips -100 itself."""
    if kind not in BUILTIN_LOSSES:
        raise ValueError(f"unknown loss kind {kind!r}; valid kinds: {', '.join(BUILTIN_LOSSES)}")
    valid = torch.ones(prediction.shape[0], dtype=torch.bool, device=prediction.device) if mask is None \
        else mask.to(device=prediction.device, dtype=torch.bool)
    if kind == "contrastive":
        return contrastive(prediction, None, valid)
    if target is None:
        raise ValueError(f"loss kind {kind!r} needs a target")
    return BUILTIN_LOSSES[kind](prediction, target, valid)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` ``[B]`` broadcast against ``like`` ``[B, ...]``."""
    return mask.reshape(-1, *[1] * (like.dim() - 1))
