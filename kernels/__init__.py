"""Fused kernels for mtmm (import name ``mtmm_kernels``), with PyTorch fallbacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_modal_attention(q, k, v, *, key_lengths=None, key_padding_mask=None, scale=None, backend="auto"):
    """PLACEHOLDER (to be replaced by the kernel work): q [B,H,Lq,D], k/v [B,H,Lk,D] -> [B,H,Lq,D]."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if key_lengths is not None:
        key_padding_mask = torch.arange(Lk, device=q.device)[None, :] < key_lengths[:, None]
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    bias = torch.zeros(B, 1, 1, Lk, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    any_valid = key_padding_mask.any(dim=1)
    bias = bias.masked_fill(~any_valid[:, None, None, None], 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return out * any_valid[:, None, None, None].to(out.dtype)
