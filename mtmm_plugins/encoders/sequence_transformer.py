"""Transformer encoder for frame sequences (audio features, time series)."""

import torch
from torch import nn

from mtmm_core.contracts import EncoderOutput
from mtmm_plugins.checks import check_int
from mtmm_plugins.encoders.common import (
    PositionalTransformer,
    blank,
    check_floating,
    check_lengths,
    check_shape,
    check_transformer,
    prefix_mask,
)


class SequenceTransformer(nn.Module):
    """Transformer over frames: a sequence [B, T, F] becomes one token per valid frame.

    Each frame of ``in_features`` values (e.g. 13 MFCCs) is projected to ``dim``,
    learned position embeddings are added (so ``T <= max_len``) and ``depth``
    transformer blocks follow, each frame attending only to valid frames.

    ``forward(frames [B, T, in_features] float, lengths [B] int | None)`` returns
    ``EncoderOutput(tokens [B, T, dim], mask [B, T] bool)``: the mask is True at
    the first ``lengths[b]`` frames (all of them when ``lengths`` is None). Padded
    frames are replaced by zeros before the projection, so their content (even NaN
    or inf) never matters; tokens at padded frames are zeros, so a sample of length 0
    gets all-zero tokens and an all-False mask.
    """

    def __init__(
        self,
        *,
        in_features: int,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_len: int = 512,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_int("in_features", in_features)
        check_transformer(dim, depth, heads, dropout)
        check_int("max_len", max_len)
        self.in_features = in_features
        self.max_len = max_len
        self.out_dim = dim
        self.frame_projection = nn.Linear(in_features, dim)
        self.transformer = PositionalTransformer(dim, depth, heads, max_len, dropout)

    def example_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random frames ``[batch_size, T, in_features]`` with valid lengths ``[batch_size]`` in ``[1, T]``."""
        steps = min(7, self.max_len)
        return torch.randn(batch_size, steps, self.in_features), torch.randint(1, steps + 1, (batch_size,))

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        check_shape(frames, "frames", ("B", "T", self.in_features))
        check_floating(frames, "frames")
        batch, steps, _ = frames.shape
        if steps > self.max_len:
            raise ValueError(
                f"expected frames [B, T, {self.in_features}] with T <= max_len={self.max_len}, "
                f"got dimension 1 = {steps}"
            )
        if lengths is None:
            mask = torch.ones(batch, steps, dtype=torch.bool, device=frames.device)
        else:
            lengths = check_lengths(lengths, batch, steps).to(frames.device)
            mask = prefix_mask(lengths, steps)
        tokens = self.transformer(self.frame_projection(blank(frames, mask)), None if lengths is None else mask, lengths)
        return EncoderOutput(tokens, mask)

    def check_values(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """The value checks of ``forward`` (lengths in ``[0, T]``), on tensors wherever they are."""
        if lengths is not None:
            check_shape(frames, "frames", ("B", "T", self.in_features))
            check_lengths(lengths, frames.shape[0], frames.shape[1])
