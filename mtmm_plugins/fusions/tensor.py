"""Tensor fusions: the full outer product (TFN) and its low-rank factorisation (LMF).

Both multiply modalities together, so each pooled modality is layer-normalised
first: the product would otherwise multiply the modalities' scales too.
"""

from __future__ import annotations

import torch
from einops import einsum, rearrange
from torch import nn

from mtmm_core.contracts import masked_mean
from mtmm_plugins.checks import check_fraction, check_int
from mtmm_plugins.fusions.base import Fusion


def _append_one(h: torch.Tensor) -> torch.Tensor:
    """``[B, F] -> [B, F + 1]``: append a constant 1, which keeps lower-order terms in the product."""
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=-1)


class TensorFusion(Fusion):
    """Tensor Fusion Network (Zadeh et al., 2017): outer product of ``[h_m; 1]`` over modalities, then a linear layer.

    Each pooled modality ``[B, D_m]`` is layer-normalised and mapped to a small
    ``h_m`` ``[B, factor_dim]`` (linear + GELU); a sample lacking ``m`` uses a learned
    placeholder ``[factor_dim]`` instead. The outer product of ``[h_m; 1]`` over all
    modalities of ``input_dims`` (sorted) has ``(factor_dim + 1) ** M`` entries,
    which are flattened and mapped by dropout and a linear layer to ``[B, dim]``.
    """

    max_product_size = 2**20

    def __init__(self, *, input_dims: dict[str, int], dim: int = 128, factor_dim: int = 16, dropout: float = 0.0):
        super().__init__(input_dims=input_dims, dim=dim)
        check_int("factor_dim", factor_dim)
        check_fraction("dropout", dropout)
        product_size = (factor_dim + 1) ** len(self.modalities)
        if product_size > self.max_product_size:
            raise ValueError(
                f"TensorFusion: (factor_dim + 1) ** {len(self.modalities)} modalities = {product_size} features, "
                f"more than {self.max_product_size}; lower factor_dim or use 'lmf'"
            )
        self.factors = nn.ModuleDict(
            {
                m: nn.Sequential(nn.LayerNorm(input_dims[m]), nn.Linear(input_dims[m], factor_dim), nn.GELU())
                for m in self.modalities
            }
        )
        self.placeholders = nn.ParameterDict(
            {m: nn.Parameter(0.02 * torch.randn(factor_dim)) for m in self.modalities}
        )
        self.output = nn.Sequential(nn.Dropout(dropout), nn.Linear(product_size, dim))

    def forward(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        in_batch, tokens, masks = self.valid_inputs(tokens, masks, present)
        batch = tokens[in_batch[0]].shape[0]
        product: torch.Tensor | None = None
        for m in self.modalities:
            h = self.placeholders[m].expand(batch, -1)
            if m in in_batch:
                features = self.factors[m](masked_mean(tokens[m], masks[m]))
                h = torch.where(present[m][:, None], features, h)
            z = _append_one(h)  # [B, F + 1]
            if product is None:
                product = z
            else:
                product = rearrange(einsum(product, z, "b i, b j -> b i j"), "b i j -> b (i j)")
        assert product is not None  # input_dims is never empty
        return self.output(product)


class LowRankTensorFusion(Fusion):
    """Low-rank Multimodal Fusion (Liu et al., 2018): the TFN product through rank-``rank`` modality factors.

    Each pooled modality is layer-normalised to ``h_m`` ``[B, D_m]`` and mapped by
    its factor ``W_m`` ``[rank, D_m + 1, dim]`` to ``f_m = [h_m; 1] @ W_m``
    ``[B, rank, dim]``. The factors of all modalities of ``input_dims`` are
    multiplied elementwise, then summed over ``rank`` with learned weights, plus a
    bias: ``[B, dim]``.

    A sample lacking ``m`` (or a batch without ``m``) uses a learned factor
    ``[rank, dim]`` in place of ``f_m``. It starts at ones, the neutral element of
    the product, so an absent modality initially drops out; training may move it.
    """

    def __init__(self, *, input_dims: dict[str, int], dim: int = 128, rank: int = 4):
        super().__init__(input_dims=input_dims, dim=dim)
        check_int("rank", rank)
        self.norms = nn.ModuleDict({m: nn.LayerNorm(input_dims[m]) for m in self.modalities})
        self.factors = nn.ParameterDict(
            {
                m: nn.Parameter(torch.randn(rank, input_dims[m] + 1, dim) / (input_dims[m] + 1) ** 0.5)
                for m in self.modalities
            }
        )
        self.absent_factors = nn.ParameterDict({m: nn.Parameter(torch.ones(rank, dim)) for m in self.modalities})
        self.rank_weights = nn.Parameter(torch.randn(rank) / rank**0.5)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        in_batch, tokens, masks = self.valid_inputs(tokens, masks, present)
        batch = tokens[in_batch[0]].shape[0]
        product: torch.Tensor | None = None
        for m in self.modalities:
            factor = self.absent_factors[m].expand(batch, -1, -1)  # [B, rank, dim]
            if m in in_batch:
                h = _append_one(self.norms[m](masked_mean(tokens[m], masks[m])))
                projected = einsum(h, self.factors[m], "b d, r d o -> b r o")
                factor = torch.where(present[m][:, None, None], projected, factor)
            product = factor if product is None else product * factor
        assert product is not None  # input_dims is never empty
        return einsum(product, self.rank_weights, "b r o, r -> b o") + self.bias
