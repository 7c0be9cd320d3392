"""ViT-style image encoder: patches, a CLS token and a transformer."""

import torch
from einops import rearrange, repeat
from torch import nn

from mtmm_core.contracts import EncoderOutput
from mtmm_plugins.checks import check_divisible, check_int
from mtmm_plugins.encoders.common import (
    PositionalTransformer,
    blank,
    check_floating,
    check_shape,
    check_transformer,
    presence_mask,
    sample_presence,
)


class ImagePatchTransformer(nn.Module):
    """Vision transformer: an image [B, C, S, S] becomes a CLS token plus one token per patch.

    The image (``S = image_size``) is cut into ``(S / patch_size)**2`` square
    patches, each flattened and projected to ``dim``; a learned CLS token is put
    first, learned position embeddings are added, and ``depth`` transformer blocks
    follow.

    ``forward(images [B, in_channels, image_size, image_size] float, lengths [B] | None)``
    returns ``EncoderOutput(tokens [B, 1 + (image_size / patch_size)**2, dim], mask [B, L] bool)``,
    CLS first. The mask is all True, except that a sample whose length is 0
    (absent) gets an all-False row; its image is replaced by zeros first, so its
    content never matters.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 1,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_int("image_size", image_size)
        check_int("patch_size", patch_size)
        check_divisible("image_size", image_size, "patch_size", patch_size)
        check_int("in_channels", in_channels)
        check_transformer(dim, depth, heads, dropout)
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_dim = dim
        num_patches = (image_size // patch_size) ** 2
        self.patch_projection = nn.Linear(patch_size * patch_size * in_channels, dim)
        self.cls_token = nn.Parameter(0.02 * torch.randn(dim))
        self.transformer = PositionalTransformer(dim, depth, heads, max_len=1 + num_patches, dropout=dropout)

    def example_batch(self, batch_size: int) -> tuple[torch.Tensor, None]:
        """Random images ``[batch_size, in_channels, image_size, image_size]`` (for ``mtmm check-plugin``)."""
        return torch.randn(batch_size, self.in_channels, self.image_size, self.image_size), None

    def forward(self, images: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        size = self.image_size
        check_shape(images, "image", ("B", self.in_channels, size, size))
        check_floating(images, "image")
        present = sample_presence(lengths, images.shape[0], images.device)
        patches = rearrange(
            blank(images, present), "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=self.patch_size, p2=self.patch_size
        )
        patch_tokens = self.patch_projection(patches)
        cls = repeat(self.cls_token, "d -> b 1 d", b=images.shape[0])
        tokens = self.transformer(torch.cat([cls, patch_tokens], dim=1))
        mask = presence_mask(present, tokens.shape[0], tokens.shape[1], tokens.device)
        return EncoderOutput(tokens, mask)

    def check_values(self, images: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """The value checks of ``forward`` (lengths >= 0), on tensors wherever they are."""
        check_shape(images, "image", ("B", self.in_channels, self.image_size, self.image_size))
        sample_presence(lengths, images.shape[0], images.device)
