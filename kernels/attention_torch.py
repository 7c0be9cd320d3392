"""PyTorch fallback: ``scaled_dot_product_attention`` with an additive float mask.

Runs on any device and dtype torch supports. The mask is ``[B, 1, 1, Lk]`` with
0 for keys to attend and -inf for the others; samples without any valid key get a
zero bias (finite softmax) and their output is replaced by 0 (``torch.where``), so both
the output and the gradients are 0 for them, never NaN. No host synchronisation and no
data-dependent branch: the same code runs whether or not a sample lacks keys (a
graph-break-free path for ``torch.compile``).
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
    attend = mask | ~has_key[:, None]  # keyless samples attend to all keys (a finite softmax), zeroed below
    bias = torch.zeros(attend.shape, dtype=q.dtype, device=q.device).masked_fill_(~attend, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=rearrange(bias, "b k -> b 1 1 k"), scale=scale)
    return torch.where(rearrange(has_key, "b -> b 1 1 1"), out, 0.0)
