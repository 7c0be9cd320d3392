"""Parameter and input checks shared by the built-in architectures."""

import torch


def check_tasks(tasks: list[str]) -> None:
    """Raise ValueError unless ``tasks`` is a non-empty list of distinct names."""
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    repeated = sorted({name for name in tasks if list(tasks).count(name) > 1})
    if repeated:
        raise ValueError(f"task names must be distinct; repeated: {', '.join(repeated)}")


def check_width(name: str, value: int, minimum: int = 1) -> None:
    """Raise ValueError unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_dropout(dropout: float) -> None:
    """Raise ValueError unless ``0 <= dropout < 1``."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def check_features(x: torch.Tensor, in_dim: int, architecture: str) -> None:
    """Raise ValueError unless ``x`` is ``[B, in_dim]``."""
    if x.dim() != 2 or x.shape[1] != in_dim:
        raise ValueError(f"{architecture} expects features of shape [B, {in_dim}], got {list(x.shape)}")
