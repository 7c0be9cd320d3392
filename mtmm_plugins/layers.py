"""Attention building blocks shared by the built-in encoders and fusions.

All attention goes through ``mtmm_kernels.cross_modal_attention``, so the fused
kernel serves every transformer in mtmm, and a query whose keys are all masked
gives zeros instead of NaN. Masked keys are replaced by zeros before they are
projected (masks replace, never multiply), so NaN or inf at a masked position can
reach neither the scores nor the values, in the forward or the backward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from mtmm_kernels import cross_modal_attention
from mtmm_kernels._validate import value_checks_enabled
from mtmm_plugins.checks import check_heads, check_int


def blank(x: torch.Tensor, keep: torch.Tensor | None, fill: int | float = 0) -> torch.Tensor:
    """``x`` with ``fill`` (default 0) wherever ``keep`` is False; ``x`` itself when ``keep`` is None.

    ``keep`` is bool and covers the leading dimensions of ``x`` (``[B]`` blanks whole
    samples, ``[B, L]`` positions). ``torch.where`` replaces the values, so NaN or inf in
    them never reaches the result, and their gradient is exactly 0 (masks replace, never
    multiply: ``x * keep`` would turn NaN into NaN, and 0 gradients into NaN ones).
    """
    if keep is None:
        return x
    keep = keep.reshape(*keep.shape, *[1] * (x.dim() - keep.dim()))
    return torch.where(keep, x, fill)


def prefix_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """Valid lengths ``[B]`` if ``mask`` ``[B, L]`` is a prefix mask in every row, else None.

    The test reads the mask on the host (a device sync on a GPU), so while value checks are off
    (the trainer's steps, ``torch.compile``) it is not made and the answer is None.
    """
    if not value_checks_enabled():
        return None
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if torch.equal(positions[None, :] < lengths[:, None], mask):
        return lengths
    return None


class AttentionKeys(NamedTuple):
    """The keys to attend: ``lengths`` ``[B]`` when they are a prefix (the kernel's fast path), else ``mask``.

    Build it once per key set with :meth:`from_mask` and pass it to every block that
    attends to those keys: the prefix test (a host sync on a GPU, made only while value checks
    are on) then runs once, not per block. Code that built the mask from lengths passes them
    instead (``AttentionKeys(lengths=...)``): no test at all.
    """

    lengths: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @classmethod
    def from_mask(cls, mask: torch.Tensor | None) -> "AttentionKeys":
        """From a bool ``mask`` ``[B, Lk]`` (True = attend); None means every key."""
        if mask is None:
            return cls()
        lengths = prefix_lengths(mask)
        return cls(lengths=lengths) if lengths is not None else cls(mask=mask)

    def valid(self, num_keys: int) -> torch.Tensor | None:
        """Bool ``[B, num_keys]``, True at the keys to attend; None when every key is attended."""
        if self.lengths is not None:
            positions = torch.arange(num_keys, device=self.lengths.device)
            return positions[None, :] < self.lengths[:, None]
        return self.mask


class MultiHeadAttention(nn.Module):
    """Multi-head attention: queries from ``x`` ``[B, Lq, D]``, keys/values from ``context`` ``[B, Lk, Dc]``.

    ``keys`` (:class:`AttentionKeys`) selects the keys; None attends to all. The masked rows of
    ``context`` are replaced by zeros before the key/value projection, so whatever they hold
    (even NaN or inf) contributes exactly nothing. Returns ``[B, Lq, D]``.
    """

    def __init__(self, dim: int, heads: int = 4, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        check_int("dim", dim)
        check_heads(heads, dim)
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
        keys: AttentionKeys | None = None,
    ) -> torch.Tensor:
        context = x if context is None else context
        keys = keys or AttentionKeys()
        context = blank(context, keys.valid(context.shape[1]))
        q = rearrange(self.to_q(x), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.to_kv(context), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        attended = cross_modal_attention(q, k, v, key_lengths=keys.lengths, key_padding_mask=keys.mask)
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

    ``keys`` (:class:`AttentionKeys`) selects the keys of the context. The masked rows of the
    context (of ``x`` itself in self-attention) are replaced by zeros before the layer norm,
    so NaN or inf there reaches neither the output's valid rows nor a gradient. Returns ``[B, L, D]``.
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
        keys: AttentionKeys | None = None,
    ) -> torch.Tensor:
        keys = keys or AttentionKeys()
        if context is None:  # self-attention: the masked positions of x are the masked keys
            x = blank(x, keys.valid(x.shape[1]))
            normed = context = self.norm_x(x)
        else:
            normed = self.norm_x(x)
            context = blank(context, keys.valid(context.shape[1]))
            context = (self.norm_x if self.norm_context is None else self.norm_context)(context)
        x = x + self.attention(normed, context, keys)
        return x + self.feed_forward(self.norm_ff(x))
