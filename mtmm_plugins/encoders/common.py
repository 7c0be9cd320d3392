"""Input checks, input masking and the token transformer shared by the built-in encoders.

Every check raises ``ValueError`` naming the offending dimension, what was
expected and what was given; the model prefixes the modality name.

Masks replace, never multiply: an encoder replaces the padded positions of its raw
input (and the whole input of a sample whose length is 0) with zeros by
``torch.where`` before any arithmetic (:func:`blank`), so NaN or inf there can reach
neither a token nor a gradient.

Checks of input *values* (lengths, token ids, categories in range) read tensors on the host,
a device sync on a GPU: they run only while ``value_checks_enabled()``. Each built-in encoder
also offers ``check_values(x, lengths)``, which the model runs on a batch's host copy
(:meth:`mtmm_core.model.MultimodalMultitaskModel.check_values`) before training with them off.
"""

import torch
from torch import nn

from mtmm_kernels._validate import value_checks_enabled
from mtmm_plugins.checks import check_fraction, check_heads, check_int
from mtmm_plugins.layers import AttentionKeys, TransformerBlock, blank  # noqa: F401  (blank: for the encoders)


def check_shape(x: object, what: str, expected: tuple[str | int, ...]) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor whose shape matches ``expected``.

    ``expected`` lists one entry per dimension: an ``int`` must match exactly, a
    ``str`` (a name such as ``"B"``) matches any size. ``what`` names the input.
    """
    spec = "[" + ", ".join(str(size) for size in expected) + "]"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {what} as a tensor {spec}, got {type(x).__name__}")
    if x.dim() != len(expected):
        raise ValueError(
            f"expected {what} {spec} ({len(expected)} dimensions), "
            f"got {x.dim()} dimensions with shape {list(x.shape)}"
        )
    for axis, (want, got) in enumerate(zip(expected, x.shape)):
        if isinstance(want, int) and got != want:
            raise ValueError(f"expected {what} {spec}, got dimension {axis} = {got}")


def check_floating(x: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` unless ``x`` holds floating-point values."""
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point {what}, got dtype {x.dtype}")


def check_lengths(lengths: object, batch: int, max_length: int | None = None) -> torch.Tensor:
    """Validate ``lengths`` ``[B]`` (integers in ``[0, max_length]``) and return them as ``long``.

    ``max_length=None`` only requires the lengths to be non-negative. The range is checked (a host
    read) only while value checks are on.
    """
    check_shape(lengths, "lengths", (batch,))
    assert isinstance(lengths, torch.Tensor)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"expected integer lengths [B], got dtype {lengths.dtype}")
    if not value_checks_enabled():
        return lengths.long()
    upper = "inf" if max_length is None else max_length
    out_of_range = (lengths < 0) if max_length is None else (lengths < 0) | (lengths > max_length)
    if out_of_range.any():
        sample = int(out_of_range.nonzero()[0, 0])
        raise ValueError(
            f"expected lengths in [0, {upper}], got {int(lengths[sample])} at sample {sample}"
        )
    return lengths.long()


def prefix_mask(lengths: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Bool mask ``[B, num_positions]``: True at the first ``lengths[b]`` positions of row ``b``."""
    positions = torch.arange(num_positions, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def sample_presence(lengths: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """For encoders without a sequence axis (images, table rows): bool ``[B]``, False where the
    length is 0 (an absent sample) and True for any other length; None when ``lengths`` is None."""
    if lengths is None:
        return None
    return check_lengths(lengths, batch).to(device) > 0


def presence_mask(present: torch.Tensor | None, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
    """Mask ``[B, num_tokens]`` from :func:`sample_presence`: an absent sample's row is all False.

    ``present=None`` marks every token valid.
    """
    if present is None:
        return torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
    return present[:, None].expand(batch, num_tokens).clone()


def check_transformer(dim: int, depth: int, heads: int, dropout: float) -> None:
    """Raise ``ValueError`` unless the parameters of a transformer encoder are valid: ``dim``, ``depth``
    and ``heads`` integers >= 1, ``heads`` dividing ``dim``, and ``0 <= dropout < 1``."""
    check_int("dim", dim)
    check_int("depth", depth)
    check_heads(heads, dim)
    check_fraction("dropout", dropout)


class PositionalTransformer(nn.Module):
    """Learned positions, a stack of ``TransformerBlock``s and a final LayerNorm.

    ``forward(tokens [B, L, D], mask [B, L] bool | None) -> [B, L, D]`` with
    ``L <= max_len``. Masked positions are neither attended to nor kept: they are
    replaced by zeros on the way out, so a row with no valid position is all zeros (finite).
    """

    def __init__(self, dim: int, depth: int, heads: int, max_len: int, dropout: float):
        super().__init__()
        self.position_embedding = nn.Parameter(0.02 * torch.randn(max_len, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` ``[B]``, when ``mask`` is the prefix mask they describe, lets attention take the
        kernel's lengths path without testing the mask (a host sync)."""
        x = self.dropout(tokens + self.position_embedding[: tokens.shape[1]])
        keys = AttentionKeys(lengths=lengths) if lengths is not None else AttentionKeys.from_mask(mask)
        for block in self.blocks:
            x = block(x, keys=keys)
        return blank(self.norm(x), mask)
