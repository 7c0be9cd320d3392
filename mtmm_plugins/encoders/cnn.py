"""Convolutional image encoder."""

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from mtmm_core.contracts import EncoderOutput
from mtmm_plugins.checks import check_int, check_ints
from mtmm_plugins.encoders.common import blank, check_floating, check_shape, presence_mask, sample_presence


class ImageCNN(nn.Module):
    """Small CNN: an image [B, C, H, W] becomes one token per position of its final feature map.

    Each entry of ``channels`` adds a stage ``3x3 conv -> GroupNorm -> GELU -> 2x2
    max-pool``, so ``k`` stages shrink the image by ``2**k`` (rounding down): with
    the default two stages an 8x8 digit gives 2x2 = 4 tokens, 28x28 gives 49 and
    32x32 gives 64. A linear layer maps the last stage's channels to ``dim``.

    There is no position embedding: the zero-padded convolutions already tell
    border from centre, and without one the encoder accepts any image size of at
    least ``2**k`` pixels a side.

    ``forward(images [B, in_channels, H, W] float, lengths [B] | None)`` returns
    ``EncoderOutput(tokens [B, (H // 2**k) * (W // 2**k), dim], mask [B, L] bool)``.
    The mask is all True, except that a sample whose length is 0 (absent) gets an
    all-False row; its image is replaced by zeros first, so its content never matters.
    """

    def __init__(self, *, in_channels: int = 1, dim: int = 128, channels: Sequence[int] = (32, 64)):
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("dim", dim)
        check_ints("channels", channels)
        if len(channels) == 0:
            raise ValueError("expected at least one entry in channels, got none")
        self.in_channels = in_channels
        self.out_dim = dim
        self.num_stages = len(channels)
        stages: list[nn.Module] = []
        for stage_in, stage_out in zip([in_channels, *channels[:-1]], channels):
            stages += [
                nn.Conv2d(stage_in, stage_out, kernel_size=3, padding=1),
                nn.GroupNorm(1, stage_out),
                nn.GELU(),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*stages)
        self.to_tokens = nn.Linear(channels[-1], dim)

    def example_batch(self, batch_size: int) -> tuple[torch.Tensor, None]:
        """Random images ``[batch_size, in_channels, 16, 16]`` (for ``mtmm check-plugin``)."""
        side = max(16, 2**self.num_stages)
        return torch.randn(batch_size, self.in_channels, side, side), None

    def forward(self, images: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        check_shape(images, "image", ("B", self.in_channels, "H", "W"))
        check_floating(images, "image")
        smallest = 2**self.num_stages
        for axis, side in ((2, "height"), (3, "width")):
            if images.shape[axis] < smallest:
                raise ValueError(
                    f"expected image {side} of at least {smallest} for {self.num_stages} pooling stages, "
                    f"got dimension {axis} = {images.shape[axis]}"
                )
        present = sample_presence(lengths, images.shape[0], images.device)
        feature_map = self.features(blank(images, present))
        tokens = self.to_tokens(rearrange(feature_map, "b c h w -> b (h w) c"))
        mask = presence_mask(present, tokens.shape[0], tokens.shape[1], tokens.device)
        return EncoderOutput(tokens, mask)

    def check_values(self, images: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """The value checks of ``forward`` (lengths >= 0), on tensors wherever they are."""
        check_shape(images, "image", ("B", self.in_channels, "H", "W"))
        sample_presence(lengths, images.shape[0], images.device)
