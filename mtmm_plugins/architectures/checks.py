"""Checks of the task list and the input shared by the built-in architectures (the numeric
parameters use :mod:`mtmm_plugins.checks`)."""

import torch


def check_tasks(tasks: list[str]) -> None:
    """Raise ValueError unless ``tasks`` is a non-empty list of distinct names."""
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    repeated = sorted({name for name in tasks if list(tasks).count(name) > 1})
    if repeated:
        raise ValueError(f"task names must be distinct; repeated: {', '.join(repeated)}")


def check_features(x: torch.Tensor, in_dim: int, architecture: str) -> None:
    """Raise ValueError unless ``x`` is ``[B, in_dim]``."""
    if x.dim() != 2 or x.shape[1] != in_dim:
        raise ValueError(f"{architecture} expects features of shape [B, {in_dim}], got {list(x.shape)}")
