"""Contrastive alignment head: matches two modalities of the same sample (CLIP-style)."""

import math

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from mtmm_plugins.checks import check_int, check_number
from mtmm_plugins.heads.mlp import check_features, check_positive

MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 1.0


class ContrastiveAlignmentHead(nn.Module):
    """Aligns two modalities: pooled features ``[B, D_a]``, ``[B, D_b]`` to similarity logits ``[B, B]``.

    Each modality's pooled features are projected to ``proj_dim`` and L2-normalised;
    entry ``[i, j]`` is ``scale * <z_a[i], z_b[j]>``, so the matching pairs lie on the
    diagonal. ``scale = 1 / temperature`` is learned as a log, clamped so the
    temperature stays in ``[0.01, 1]``. The fused features ``x`` only give the batch size.

    Samples lacking either modality (``present[m][b]`` False) still get finite logits
    (their pooled features are zeros); the contrastive loss leaves them out using
    ``present``. If one of the two modalities is missing from ``pooled`` altogether,
    the result is a ``[B, B]`` tensor of zeros and the loss counts no sample.
    """

    uses_modalities = True
    loss_kind = "contrastive"
    metrics = ("retrieval_accuracy",)

    def __init__(
        self,
        *,
        in_dim: int,
        modality_dims: dict[str, int],
        modalities: list[str],
        proj_dim: int = 64,
        temperature: float = 0.07,
    ):
        super().__init__()
        check_positive("in_dim", in_dim)
        check_positive("proj_dim", proj_dim)
        available = ", ".join(modality_dims) or "none"
        if isinstance(modalities, str) or len(modalities) != 2 or modalities[0] == modalities[1]:
            raise ValueError(
                f"contrastive head needs exactly two different modalities, got {modalities!r}; "
                f"available: {available}"
            )
        unknown = [name for name in modalities if name not in modality_dims]
        if unknown:
            raise ValueError(
                f"contrastive head modalities {unknown} are not in the model; available: {available}"
            )
        for name in modalities:
            check_int(f"modality_dims[{name!r}]", modality_dims[name])
        check_number("temperature", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
        self.in_dim = in_dim
        self.modality_dims = {name: modality_dims[name] for name in modalities}
        self.modality_a, self.modality_b = modalities
        self.modalities = (self.modality_a, self.modality_b)
        self.project = nn.ModuleList(nn.Linear(modality_dims[name], proj_dim) for name in modalities)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def scale(self) -> torch.Tensor:
        """The current ``1 / temperature``, a scalar in ``[1, 100]``."""
        return self.log_scale.clamp(math.log(1.0 / MAX_TEMPERATURE), math.log(1.0 / MIN_TEMPERATURE)).exp()

    def forward(
        self,
        x: torch.Tensor,
        pooled: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        check_features(x, self.in_dim, "contrastive head")
        batch = x.shape[0]
        if self.modality_a not in pooled or self.modality_b not in pooled:
            # Zeros, still connected to the scale so a backward pass through them works.
            return self.scale() * x.new_zeros(batch, batch)
        projected = []
        for name, projection in zip((self.modality_a, self.modality_b), self.project):
            features = pooled[name]
            expected = (batch, self.modality_dims[name])
            if features.shape != expected:
                raise ValueError(
                    f"contrastive head expects pooled[{name!r}] of shape {list(expected)}, "
                    f"got {list(features.shape)}"
                )
            projected.append(F.normalize(projection(features), dim=-1))
        z_a, z_b = projected
        return self.scale() * einsum(z_a, z_b, "i d, j d -> i j")
