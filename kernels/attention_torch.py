"""PyTorch fallback: ``scaled_dot_product_attention`` with an additive float mask.

Runs on any device and dtype torch supports. The mask is ``[B, 1, 1, Lk]`` with
0 for keys to attend and -inf for the others; samples without any valid key get a
zero bias (finite softmax) and their output is multiplied by 0, so both the output
and the gradients are 0 for them, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ._masks import key_mask


def attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """``q`` ``[B, H, Lq, D]``, ``k``/``v`` ``[B, H, Lk, D]`` -> ``[B, H, Lq, D]`` (arguments pre-validated)."""
    mask = key_mask(key_lengths, key_padding_mask, k.shape[2])
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    has_key = mask.any(dim=1)  # [B]
    # Checking on the host is free on CPU; on a GPU it would sync, so there the fix-up always runs.
    every_sample_has_key = not has_key.is_cuda and bool(has_key.all())
    attend = mask if every_sample_has_key else mask | ~has_key[:, None]  # keyless samples attend to all, zeroed below
    bias = torch.zeros(attend.shape, dtype=q.dtype, device=q.device).masked_fill_(~attend, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=rearrange(bias, "b k -> b 1 1 k"), scale=scale)
    if every_sample_has_key:
        return out
    return out * rearrange(has_key, "b -> b 1 1 1").to(out.dtype)
