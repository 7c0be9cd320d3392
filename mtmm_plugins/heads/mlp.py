"""The small MLP every built-in head ends with, and the checks its parameters share."""

import torch
from torch import nn

from mtmm_plugins.checks import check_fraction, check_int


def check_positive(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is an integer >= 1."""
    check_int(name, value)


def check_hidden_and_dropout(hidden: int, dropout: float) -> None:
    """Raise ValueError unless ``hidden`` is an integer >= 0 and ``0 <= dropout < 1``."""
    check_int("hidden", hidden, minimum=0, note="0 = a single linear layer")
    check_fraction("dropout", dropout)


def check_features(x: torch.Tensor, in_dim: int, head: str) -> None:
    """Raise ValueError unless ``x`` is ``[B, in_dim]``."""
    if x.dim() != 2 or x.shape[1] != in_dim:
        raise ValueError(f"{head} expects features of shape [B, {in_dim}], got {list(x.shape)}")


def prediction_mlp(in_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """MLP ``[B, in_dim] -> [B, out_dim]``: dropout then linear, or, when ``hidden > 0``,
    linear-GELU-dropout-linear with ``hidden`` units."""
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )
