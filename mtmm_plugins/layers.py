"""Attention building blocks shared by the built-in encoders and fusions.

All attention goes through ``mtmm_kernels.cross_modal_attention``, so the fused
kernel serves every transformer in mtmm, and a query whose keys are all masked
gives zeros instead of NaN.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from mtmm_kernels import cross_modal_attention


def prefix_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """Valid lengths ``[B]`` if ``mask`` ``[B, L]`` is a prefix mask in every row, else None."""
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if torch.equal(positions[None, :] < lengths[:, None], mask):
        return lengths
    return None


class MultiHeadAttention(nn.Module):
    """Multi-head attention: queries from ``x`` ``[B, Lq, D]``, keys/values from ``context`` ``[B, Lk, Dc]``.

    ``key_mask`` ``[B, Lk]`` (bool, True = attend) selects the keys; a prefix mask is
    passed to the kernel as per-sample lengths (its fast path). Returns ``[B, Lq, D]``.
    """

    def __init__(self, dim: int, heads: int = 4, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"attention width dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.to_kv(context), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        lengths = None if key_mask is None else prefix_lengths(key_mask)
        if lengths is not None:
            attended = cross_modal_attention(q, k, v, key_lengths=lengths)
        else:
            attended = cross_modal_attention(q, k, v, key_padding_mask=key_mask)
        return self.dropout(self.out(rearrange(attended, "b h l d -> b l (h d)")))


class FeedForward(nn.Module):
    """Position-wise MLP ``[B, L, D] -> [B, L, D]`` with GELU."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x`` ``[B, L, D]`` attends to ``context`` (default: itself), then an MLP.

    ``key_mask`` ``[B, Lk]`` masks the keys of the context. Returns ``[B, L, D]``.
    """

    def __init__(self, dim: int, heads: int = 4, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        # A context of another width gets its own norm; otherwise x's norm serves both (no unused weights).
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None
        self.attention = MultiHeadAttention(dim, heads, context_dim, dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, dropout=dropout)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        normed = self.norm_x(x)
        if context is None:
            context = normed
        else:
            context = (self.norm_x if self.norm_context is None else self.norm_context)(context)
        x = x + self.attention(normed, context, key_mask)
        return x + self.feed_forward(self.norm_ff(x))
