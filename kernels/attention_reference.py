"""Plain float64 attention: the ground truth the tests compare the backends against.

Written for clarity, not speed: it materialises the ``[B, H, Lq, Lk]`` scores.
"""

from __future__ import annotations

import torch

from ._masks import key_mask


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_lengths: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Cross-modal attention in float64, differentiable by autograd.

    ``q`` ``[B, H, Lq, D]``, ``k``/``v`` ``[B, H, Lk, D]`` -> ``[B, H, Lq, D]`` (float64).
    A sample with no valid key gives zeros (and zero gradients).
    """
    q, k, v = q.double(), k.double(), v.double()
    Lk, D = k.shape[2], q.shape[3]
    scale = D**-0.5 if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    mask = key_mask(key_lengths, key_padding_mask, Lk)
    if mask is None:
        return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v)
    attend = mask[:, None, None, :]  # [B, 1, 1, Lk]
    has_key = mask.any(dim=1)[:, None, None, None]  # [B, 1, 1, 1]
    # Rows without any key: softmax over plain zeros (finite), then zeroed below.
    scores = torch.where(attend, scores, float("-inf"))
    scores = torch.where(has_key, scores, 0.0)
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v) * has_key
