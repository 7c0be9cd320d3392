"""An example mtmm plugin: one encoder and one fusion, registered through mtmm's hooks."""

from __future__ import annotations

import torch
from torch import nn

from mtmm_core import EncoderOutput, hookimpl, masked_mean


class FrameMLPEncoder(nn.Module):
    """Per-frame MLP: frames ``[B, T, F]`` (valid lengths ``[B]``) become tokens ``[B, T, dim]``."""

    def __init__(self, *, in_features: int, dim: int = 128, hidden: int = 128):
        super().__init__()
        self.in_features = in_features
        self.out_dim = dim
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        if x.dim() != 3 or x.shape[2] != self.in_features:
            raise ValueError(f"expected frames [B, T, {self.in_features}], got shape {tuple(x.shape)}")
        batch, frames, _ = x.shape
        if lengths is None:
            lengths = torch.full((batch,), frames, device=x.device)
        mask = torch.arange(frames, device=x.device)[None, :] < lengths[:, None]
        frames_in = torch.where(mask[:, :, None], x, 0.0)  # padded frames may hold NaN: replace, never multiply
        return EncoderOutput(self.net(frames_in), mask)

    def example_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random frames ``[batch_size, 6, in_features]`` and lengths in [1, 6], for ``mtmm check-plugin``."""
        return torch.randn(batch_size, 6, self.in_features), torch.randint(1, 7, (batch_size,))


class MaxPoolFusion(nn.Module):
    """Element-wise max over the present modalities of their projected pooled tokens: ``[B, dim]``."""

    def __init__(self, *, input_dims: dict[str, int], dim: int = 128):
        super().__init__()
        self.out_dim = dim
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in sorted(input_dims.items())})

    def forward(self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                present: dict[str, torch.Tensor]) -> torch.Tensor:
        stacked, valid = [], []
        for modality in sorted(tokens):
            stacked.append(self.project[modality](masked_mean(tokens[modality], masks[modality])))
            valid.append(present[modality])
        features = torch.stack(stacked, dim=1)  # [B, M, dim]
        absent = ~torch.stack(valid, dim=1)  # [B, M]
        return features.masked_fill(absent[:, :, None], float("-inf")).amax(dim=1)


@hookimpl
def register_encoders(register):
    register("frame_mlp", FrameMLPEncoder, example_params={"in_features": 13})


@hookimpl
def register_fusions(register):
    register("max", MaxPoolFusion)
