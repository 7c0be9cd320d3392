"""Fusions of pooled modalities: concatenation, mean, late fusion and gated fusion.

Each first pools every modality to one vector with ``masked_mean`` over its valid
tokens, ``[B, L_m, D_m] -> [B, D_m]``, then combines those vectors.
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import nn

from mtmm_core.contracts import masked_mean
from mtmm_plugins.checks import check_fraction, check_int
from mtmm_plugins.fusions.base import Fusion, present_mean


def _pool(
    modalities: list[str], tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Masked mean of each modality's tokens: ``{m: [B, D_m]}``."""
    return {m: masked_mean(tokens[m], masks[m]) for m in modalities}


class ConcatFusion(Fusion):
    """Concatenate the projected, pooled modalities in a fixed order, then a linear layer to ``dim``.

    Each modality ``m`` is pooled ``[B, D_m]`` and projected to ``[B, dim]``; the
    slot of a modality a sample lacks (or the whole batch lacks) holds a learned
    placeholder ``[dim]`` instead. The ``len(input_dims) * dim`` concatenation goes
    through GELU and a linear layer to the output ``[B, dim]``.
    """

    def __init__(self, *, input_dims: dict[str, int], dim: int = 128):
        super().__init__(input_dims=input_dims, dim=dim)
        self.projections = nn.ModuleDict({m: nn.Linear(input_dims[m], dim) for m in self.modalities})
        self.placeholders = nn.ParameterDict({m: nn.Parameter(0.02 * torch.randn(dim)) for m in self.modalities})
        self.output = nn.Sequential(nn.GELU(), nn.Linear(len(self.modalities) * dim, dim))

    def forward(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        in_batch, tokens, masks = self.valid_inputs(tokens, masks, present)
        batch = tokens[in_batch[0]].shape[0]
        pooled = _pool(in_batch, tokens, masks)
        slots = []
        for m in self.modalities:
            placeholder = self.placeholders[m].expand(batch, -1)
            if m in in_batch:
                slots.append(torch.where(present[m][:, None], self.projections[m](pooled[m]), placeholder))
            else:
                slots.append(placeholder)
        return self.output(torch.cat(slots, dim=-1))


class MeanFusion(Fusion):
    """Project each pooled modality to ``dim`` and average over the modalities each sample has.

    Pooled ``[B, D_m]`` -> linear ``[B, dim]`` -> mean over present modalities ``[B, dim]``.
    """

    def __init__(self, *, input_dims: dict[str, int], dim: int = 128):
        super().__init__(input_dims=input_dims, dim=dim)
        self.projections = nn.ModuleDict({m: nn.Linear(input_dims[m], dim) for m in self.modalities})

    def forward(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        in_batch, tokens, masks = self.valid_inputs(tokens, masks, present)
        pooled = _pool(in_batch, tokens, masks)
        return present_mean({m: self.projections[m](pooled[m]) for m in in_batch}, present)


class LateFusion(Fusion):
    """Give each modality its own MLP to ``dim`` and average the results over present modalities.

    Pooled ``[B, D_m]`` -> ``Linear(D_m, hidden_dim)``, GELU, dropout,
    ``Linear(hidden_dim, dim)`` -> ``[B, dim]``; the per-modality outputs are
    independent until the final mean ``[B, dim]``. ``hidden_dim`` defaults to ``dim``.
    """

    def __init__(
        self, *, input_dims: dict[str, int], dim: int = 128, hidden_dim: int | None = None, dropout: float = 0.0
    ):
        super().__init__(input_dims=input_dims, dim=dim)
        hidden = dim if hidden_dim is None else hidden_dim
        check_int("hidden_dim", hidden)
        check_fraction("dropout", dropout)
        self.branches = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(input_dims[m], hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
                )
                for m in self.modalities
            }
        )

    def forward(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        in_batch, tokens, masks = self.valid_inputs(tokens, masks, present)
        pooled = _pool(in_batch, tokens, masks)
        return present_mean({m: self.branches[m](pooled[m]) for m in in_batch}, present)


class GatedFusion(Fusion):
    """Weighted sum of projected modalities, weights from a softmax of learned per-modality gates.

    For each modality, pooled ``[B, D_m]`` gives a projection ``[B, dim]`` and a
    gate score ``[B]``. The scores go through a softmax over the modalities present
    in each sample (absent ones get weight exactly 0), and the output ``[B, dim]``
    is the weighted sum of the projections.
    """

    def __init__(self, *, input_dims: dict[str, int], dim: int = 128):
        super().__init__(input_dims=input_dims, dim=dim)
        self.projections = nn.ModuleDict({m: nn.Linear(input_dims[m], dim) for m in self.modalities})
        self.gates = nn.ModuleDict({m: nn.Linear(input_dims[m], 1) for m in self.modalities})

    def forward(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        in_batch, tokens, masks = self.valid_inputs(tokens, masks, present)
        pooled = _pool(in_batch, tokens, masks)
        keep = torch.stack([present[m] for m in in_batch], dim=1)  # [B, M]
        scores = torch.cat([self.gates[m](pooled[m]) for m in in_batch], dim=1)  # [B, M]
        weights = torch.softmax(torch.where(keep, scores, float("-inf")), dim=1)
        projected = torch.stack([self.projections[m](pooled[m]) for m in in_batch], dim=1)  # [B, M, dim]
        projected = torch.where(keep[:, :, None], projected, 0.0)
        return einsum(weights, projected, "b m, b m d -> b d")
