"""Attention fusions: MulT-style cross-modal attention and a Perceiver-style latent bottleneck.

Both use ``TransformerBlock`` from ``mtmm_plugins.layers``. The key mask of a
modality's tokens is ``masks[m] & present[m][:, None]`` (from ``valid_inputs``, which
also replaces the tokens outside it by zeros), so a sample's absent modality is never
attended to; a query whose keys are all masked gets zeros from the attention (the
kernel's rule) and keeps its residual.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import nn

from mtmm_core.contracts import masked_mean
from mtmm_plugins.checks import check_fraction, check_heads, check_int
from mtmm_plugins.fusions.base import Fusion, present_mean
from mtmm_plugins.layers import AttentionKeys, TransformerBlock


def _to_width(width: int, dim: int) -> nn.Module:
    """A linear map from ``width`` to ``dim``, or the identity when they are equal."""
    return nn.Identity() if width == dim else nn.Linear(width, dim)


class CrossModalAttentionFusion(Fusion):
    """MulT-style fusion: each modality's tokens attend to the other modalities' tokens, then pool and average.

    ``tokens[m]`` ``[B, L_m, D_m]`` is projected to ``[B, L_m, dim]`` (identity when
    ``D_m == dim``). Modality ``m`` then runs ``depth`` of its own transformer blocks
    whose queries are its tokens and whose keys/values are the concatenated tokens
    ``[B, sum of L_o, dim]`` of the other modalities ``o`` in the batch. The result
    is pooled over ``masks[m]`` to ``[B, dim]``, averaged over the modalities each
    sample has, and layer-normalised and projected to the output ``[B, dim]``.
    With a single modality in the batch the cross-attention is skipped.
    """

    def __init__(
        self, *, input_dims: dict[str, int], dim: int = 128, heads: int = 4, depth: int = 1, dropout: float = 0.0
    ):
        super().__init__(input_dims=input_dims, dim=dim)
        check_heads(heads, dim)
        check_int("depth", depth)
        check_fraction("dropout", dropout)
        self.projections = nn.ModuleDict({m: _to_width(input_dims[m], dim) for m in self.modalities})
        self.cross_blocks = nn.ModuleDict(
            {
                m: nn.ModuleList([TransformerBlock(dim, heads, dropout=dropout) for _ in range(depth)])
                for m in self.modalities
            }
        )
        self.output = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        in_batch, tokens, masks = self.valid_inputs(tokens, masks, present)
        projected = {m: self.projections[m](tokens[m]) for m in in_batch}
        pooled = {}
        for m in in_batch:
            x = projected[m]
            others = [o for o in in_batch if o != m]
            if others:
                context = torch.cat([projected[o] for o in others], dim=1)
                keys = AttentionKeys.from_mask(torch.cat([masks[o] for o in others], dim=1))
                for block in self.cross_blocks[m]:
                    x = block(x, context, keys)
            pooled[m] = masked_mean(x, masks[m])
        return self.output(present_mean(pooled, present))


class PerceiverFusion(Fusion):
    """Perceiver-style fusion: learned latents cross-attend to every modality's tokens, then self-attend.

    ``tokens[m]`` ``[B, L_m, D_m]`` is projected to ``[B, L_m, dim]`` (identity when
    ``D_m == dim``) and tagged with a learned modality embedding ``[dim]``; the
    modalities are concatenated to ``[B, sum of L_m, dim]``. ``num_latents`` learned
    latents ``[B, num_latents, dim]`` attend to them in one cross-attention block,
    then ``depth`` self-attention blocks follow. The mean over the latents is
    layer-normalised: output ``[B, dim]``.
    """

    def __init__(
        self,
        *,
        input_dims: dict[str, int],
        dim: int = 128,
        num_latents: int = 8,
        heads: int = 4,
        depth: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__(input_dims=input_dims, dim=dim)
        check_int("num_latents", num_latents)
        check_heads(heads, dim)
        check_int("depth", depth, minimum=0, note="0 = the cross-attention block alone")
        check_fraction("dropout", dropout)
        self.projections = nn.ModuleDict({m: _to_width(input_dims[m], dim) for m in self.modalities})
        self.modality_embeddings = nn.ParameterDict(
            {m: nn.Parameter(0.02 * torch.randn(dim)) for m in self.modalities}
        )
        self.latents = nn.Parameter(0.02 * torch.randn(num_latents, dim))
        self.cross_block = TransformerBlock(dim, heads, dropout=dropout)
        self.self_blocks = nn.ModuleList([TransformerBlock(dim, heads, dropout=dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        in_batch, tokens, masks = self.valid_inputs(tokens, masks, present)
        context = torch.cat(
            [self.projections[m](tokens[m]) + self.modality_embeddings[m] for m in in_batch], dim=1
        )
        keys = AttentionKeys.from_mask(torch.cat([masks[m] for m in in_batch], dim=1))
        latents = repeat(self.latents, "n d -> b n d", b=context.shape[0])
        latents = self.cross_block(latents, context, keys)
        for block in self.self_blocks:
            latents = block(latents)
        return self.norm(latents.mean(dim=1))
