"""Byte-level text encoder with a built-in tokenizer (nothing to download)."""

from collections.abc import Sequence

import torch
from torch import nn

from mtmm_core.contracts import EncoderOutput
from mtmm_kernels._validate import value_checks_enabled
from mtmm_plugins.checks import check_int
from mtmm_plugins.encoders.common import (
    PositionalTransformer,
    blank,
    check_lengths,
    check_shape,
    check_transformer,
    prefix_mask,
)


class ByteTokenizer:
    """Turns strings into UTF-8 byte ids: byte ``v`` becomes id ``v + OFFSET``, and 0 is padding.

    ``encode(texts, max_len)`` returns ``(ids [B, T] long, lengths [B] long)`` with
    ``T`` the longest encoded text (at least 1), each text cut after ``max_len``
    bytes. ``decode(ids, lengths)`` inverts it (a cut inside a multi-byte
    character decodes as U+FFFD).
    """

    PAD_ID = 0
    OFFSET = 1
    VOCAB_SIZE = 256 + OFFSET

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = [list(text.encode("utf-8")[:max_len]) for text in texts]
        lengths = torch.tensor([len(byte_values) for byte_values in encoded], dtype=torch.long)
        longest = max([1, *lengths.tolist()])
        ids = torch.full((len(texts), longest), self.PAD_ID, dtype=torch.long)
        for row, byte_values in enumerate(encoded):
            ids[row, : len(byte_values)] = torch.tensor(byte_values, dtype=torch.long) + self.OFFSET
        return ids, lengths

    def decode(self, ids: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [
            bytes((row[:length] - self.OFFSET).tolist()).decode("utf-8", errors="replace")
            for row, length in zip(ids, lengths.tolist())
        ]


class ByteTextEncoder(nn.Module):
    """Byte-level text transformer: strings (or byte ids [B, T]) become one token per byte.

    ``forward(x, lengths)`` takes either

    - a list of ``str``: encoded with ``ByteTokenizer`` (each cut after ``max_len``
      bytes); a given ``lengths`` [B] can only shorten them (so 0 marks an absent
      sample), or
    - a LongTensor of ids ``[B, T]`` from ``ByteTokenizer`` (``T <= max_len``, valid
      ids in ``[0, 256]``): with ``lengths`` the first ``lengths[b]`` ids are valid,
      without it every non-padding id (``!= 0``) is.

    Ids past the valid ones are replaced by the padding id before the embedding (and
    not range-checked), so they never matter. Ids are embedded, learned position
    embeddings are added and ``depth`` transformer blocks follow, each byte attending
    only to valid bytes. Returns
    ``EncoderOutput(tokens [B, T, dim], mask [B, T] bool)``; tokens at padding are
    zeros, so an empty or absent text gives all-zero tokens and an all-False mask.
    """

    def __init__(
        self,
        *,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_len: int = 256,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_transformer(dim, depth, heads, dropout)
        check_int("max_len", max_len)
        self.max_len = max_len
        self.out_dim = dim
        self.tokenizer = ByteTokenizer()
        self.byte_embedding = nn.Embedding(ByteTokenizer.VOCAB_SIZE, dim, padding_idx=ByteTokenizer.PAD_ID)
        self.transformer = PositionalTransformer(dim, depth, heads, max_len, dropout)

    def example_batch(self, batch_size: int) -> tuple[list[str], None]:
        """Random short strings, one per sample (for ``mtmm check-plugin``)."""
        words = ["seven", "cats", "sat", "on", "the", "mat", "ünïcode", "42"]
        return [" ".join(words[(i + k) % len(words)] for k in range(1 + i % 4)) for i in range(batch_size)], None

    def forward(
        self, x: Sequence[str] | torch.Tensor, lengths: torch.Tensor | None = None
    ) -> EncoderOutput:
        device = self.byte_embedding.weight.device
        if isinstance(x, torch.Tensor):
            ids, mask = self._check_ids(x, lengths)
        else:
            ids, mask = self._tokenize(x, lengths)
        ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        ids = blank(ids, mask, ByteTokenizer.PAD_ID)
        tokens = self.transformer(self.byte_embedding(ids), mask)
        return EncoderOutput(tokens, mask)

    def _tokenize(
        self, texts: Sequence[str], lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"expected text as a list of str or ids [B, T], got {type(texts).__name__}")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"expected a list of str, got {type(text).__name__} at index {index}")
        ids, text_lengths = self.tokenizer.encode(texts, self.max_len)
        if lengths is not None:  # on the lengths' device: no copy back to the host
            lengths = check_lengths(lengths, len(texts))
            text_lengths = torch.minimum(text_lengths.to(lengths.device, non_blocking=True), lengths)
        return ids, prefix_mask(text_lengths, ids.shape[1])

    def check_values(self, x: Sequence[str] | torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """The value checks of ``forward`` (lengths, and ids in range), on tensors wherever they are."""
        if isinstance(x, torch.Tensor):
            self._check_ids(x, lengths)
        elif lengths is not None and isinstance(x, Sequence) and not isinstance(x, str):
            check_lengths(lengths, len(x))

    def _check_ids(
        self, ids: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(ids, "ids", ("B", "T"))
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"expected integer ids [B, T], got dtype {ids.dtype}")
        batch, steps = ids.shape
        if steps > self.max_len:
            raise ValueError(
                f"expected ids [B, T] with T <= max_len={self.max_len}, got dimension 1 = {steps}"
            )
        if lengths is None:
            mask = ids != ByteTokenizer.PAD_ID
        else:
            mask = prefix_mask(check_lengths(lengths, batch, steps).to(ids.device), steps)
        out_of_range = mask & ((ids < 0) | (ids >= ByteTokenizer.VOCAB_SIZE))
        if value_checks_enabled() and out_of_range.any():
            raise ValueError(f"expected ids in [0, {ByteTokenizer.VOCAB_SIZE - 1}], got {int(ids[out_of_range][0])}")
        return ids, mask
