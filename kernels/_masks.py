"""Small helpers turning the two key-mask forms into one another."""

from __future__ import annotations

import torch


def lengths_to_mask(key_lengths: torch.Tensor, Lk: int) -> torch.Tensor:
    """Prefix lengths ``[B]`` -> bool mask ``[B, Lk]`` (True = attend)."""
    positions = torch.arange(Lk, device=key_lengths.device)
    return positions[None, :] < key_lengths[:, None]


def key_mask(key_lengths: torch.Tensor | None, key_padding_mask: torch.Tensor | None, Lk: int) -> torch.Tensor | None:
    """The bool mask ``[B, Lk]`` described by either argument, or None when all keys attend."""
    if key_lengths is not None:
        return lengths_to_mask(key_lengths, Lk)
    return key_padding_mask
