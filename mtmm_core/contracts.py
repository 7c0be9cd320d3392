"""What each kind of component receives and returns (see docs/plugins.md)."""

from __future__ import annotations

from typing import NamedTuple

import torch

LOSS_KINDS = ("cross_entropy", "bce", "mse", "l1", "huber", "contrastive")


class EncoderOutput(NamedTuple):
    """An encoder's result: ``tokens`` ``[B, L, D]`` and ``mask`` ``[B, L]`` (bool, True = valid)."""

    tokens: torch.Tensor
    mask: torch.Tensor


class Batch(NamedTuple):
    """One batch from a data set split.

    ``inputs`` modality -> batch; ``lengths`` modality -> ``[B]`` valid lengths;
    ``targets`` task -> target; ``present`` modality -> bool ``[B]`` (None = all
    present); ``task_masks`` task -> bool ``[B]`` (None = every sample labelled).
    """

    inputs: dict
    lengths: dict
    targets: dict
    present: dict | None = None
    task_masks: dict | None = None


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` ``[B, L, D]`` over valid positions of ``mask`` ``[B, L]``: ``[B, D]``.

    A row with no valid position gives zeros (never NaN).
    """
    total = torch.where(mask.unsqueeze(-1), tokens, 0.0).sum(dim=1)  # replace, never multiply: 0 * NaN is NaN
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(total.dtype)
    return total / count
