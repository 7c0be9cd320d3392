"""Encoder for table rows: numeric features and categorical columns."""

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtmm_core.contracts import EncoderOutput
from mtmm_kernels._validate import value_checks_enabled
from mtmm_plugins.checks import check_fraction, check_int, check_ints
from mtmm_plugins.encoders.common import blank, check_floating, check_shape, presence_mask, sample_presence


class TabularMLP(nn.Module):
    """Table-row encoder: numeric features [B, F] and categorical columns [B, C] become 1 + C tokens.

    The numeric features go through an MLP (``num_numeric -> hidden -> dim``) and
    give one token; each categorical column has its own embedding table
    (``categories[c]`` entries of width ``embedding_dim``) and a shared linear map
    to ``dim`` gives one token per column. A LayerNorm finishes every token.

    ``forward(x, lengths [B] | None)`` takes ``x`` as a float tensor
    ``[B, num_numeric]`` (only when ``categories`` is empty), an integer tensor ``[B, C]`` of
    categories (only when ``num_numeric`` is 0), or a dict
    ``{"numeric": [B, num_numeric] float, "categorical": [B, C] long}`` (a key may
    be left out when its part has no columns). Returns ``EncoderOutput(tokens
    [B, L, dim], mask [B, L] bool)`` with the numeric token first (left out when
    ``num_numeric == 0``) and then the ``C = len(categories)`` column tokens. The
    mask is all True, except that a sample whose length is 0 (absent) gets an
    all-False row; its numeric features and categories are replaced by zeros first
    (and not range-checked), so their content never matters.
    """

    def __init__(
        self,
        *,
        num_numeric: int,
        categories: Sequence[int] = (),
        embedding_dim: int = 16,
        hidden: int = 128,
        dim: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_int("num_numeric", num_numeric, minimum=0)
        check_ints("categories", categories)
        if num_numeric == 0 and len(categories) == 0:
            raise ValueError("expected at least one column: num_numeric is 0 and categories is empty")
        check_int("embedding_dim", embedding_dim)
        check_int("hidden", hidden)
        check_int("dim", dim)
        check_fraction("dropout", dropout)
        self.num_numeric = num_numeric
        self.categories = list(categories)
        self.out_dim = dim
        self.numeric_mlp = (
            nn.Sequential(
                nn.Linear(num_numeric, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
            )
            if num_numeric > 0
            else None
        )
        self.category_embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim) for n in self.categories)
        self.category_projection = nn.Linear(embedding_dim, dim) if self.categories else None
        self.norm = nn.LayerNorm(dim)

    def example_batch(self, batch_size: int) -> tuple[dict[str, torch.Tensor], None]:
        """Random numeric features and categories, ``{"numeric": [B, num_numeric], "categorical": [B, C]}``."""
        x = {"numeric": torch.randn(batch_size, self.num_numeric)}
        if self.categories:
            x["categorical"] = torch.stack([torch.randint(0, n, (batch_size,)) for n in self.categories], dim=1)
        return x, None

    def forward(
        self, x: torch.Tensor | Mapping[str, torch.Tensor], lengths: torch.Tensor | None = None
    ) -> EncoderOutput:
        numeric, categorical = self._split(x)
        parts = []  # the inputs this encoder reads, checked before anything is computed
        if self.numeric_mlp is not None:
            check_shape(numeric, "numeric", ("B", self.num_numeric))
            check_floating(numeric, "numeric")
            parts.append(numeric)
        if self.category_projection is not None:
            check_shape(categorical, "categorical", ("B", len(self.categories)))
            parts.append(categorical)
        if len(parts) == 2 and parts[0].shape[0] != parts[1].shape[0]:
            raise ValueError(
                f"expected categorical [B, {len(self.categories)}] with B = {parts[0].shape[0]} "
                f"(the numeric batch), got dimension 0 = {parts[1].shape[0]}"
            )
        present = sample_presence(lengths, parts[0].shape[0], parts[0].device)
        tokens: list[torch.Tensor] = []
        if self.numeric_mlp is not None:
            tokens.append(self.numeric_mlp(blank(numeric, present))[:, None, :])
        if self.category_projection is not None:
            categorical = blank(categorical, present)
            self._check_categories(categorical)
            embedded = [table(categorical[:, c]) for c, table in enumerate(self.category_embeddings)]
            tokens.append(self.category_projection(torch.stack(embedded, dim=1)))
        out = self.norm(torch.cat(tokens, dim=1))
        mask = presence_mask(present, out.shape[0], out.shape[1], out.device)
        return EncoderOutput(out, mask)

    def check_values(self, x: torch.Tensor | Mapping[str, torch.Tensor], lengths: torch.Tensor | None = None) -> None:
        """The value checks of ``forward`` (lengths >= 0, categories in range), on tensors wherever they are."""
        numeric, categorical = self._split(x)
        part = numeric if numeric is not None else categorical
        if part is None:
            return
        present = sample_presence(lengths, part.shape[0], part.device)
        if self.category_projection is not None and categorical is not None:
            check_shape(categorical, "categorical", ("B", len(self.categories)))
            self._check_categories(blank(categorical, present))

    def _split(
        self, x: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if isinstance(x, torch.Tensor):
            if self.categories and self.num_numeric == 0 and not x.is_floating_point():
                return None, x  # category ids [B, C] alone (a data folder's dtype: int64 array)
            if self.categories:
                raise ValueError(
                    f"expected a dict with 'categorical' [B, {len(self.categories)}] "
                    "(categories is not empty), got a tensor"
                )
            return x, None
        if not isinstance(x, Mapping):
            raise ValueError(
                f"expected a tensor or a dict of 'numeric'/'categorical', got {type(x).__name__}"
            )
        unknown = set(x) - {"numeric", "categorical"}
        if unknown:
            raise ValueError(
                f"expected keys 'numeric' and 'categorical', got unknown key(s) {sorted(unknown)}"
            )
        for key, needed in (("numeric", self.num_numeric > 0), ("categorical", bool(self.categories))):
            if needed and key not in x:
                raise ValueError(f"expected key '{key}' in the tabular input, got keys {sorted(x)}")
        return x.get("numeric"), x.get("categorical")

    def _check_categories(self, categorical: torch.Tensor) -> None:
        if categorical.is_floating_point() or categorical.dtype == torch.bool:
            raise ValueError(f"expected integer categorical [B, C], got dtype {categorical.dtype}")
        if not value_checks_enabled():  # the range check reads the values on the host
            return
        for column, cardinality in enumerate(self.categories):
            values = categorical[:, column]
            bad = (values < 0) | (values >= cardinality)
            if bad.any():
                sample = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"expected categorical column {column} in [0, {cardinality - 1}], "
                    f"got {int(values[sample])} at sample {sample}"
                )
