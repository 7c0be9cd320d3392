"""Hard parameter sharing: one trunk for all tasks."""

import torch
from torch import nn

from mtmm_plugins.architectures.checks import check_features, check_tasks
from mtmm_plugins.checks import check_fraction, check_int


class HardParameterSharing(nn.Module):
    """One shared MLP trunk: features ``[B, in_dim]`` to the same ``[B, out_dim]`` for every task.

    The trunk is ``depth`` blocks of linear-GELU-dropout of width ``hidden``, so
    ``out_dim = hidden``; ``depth = 0`` makes it the identity with ``out_dim = in_dim``.
    Every task's entry in the result is the same tensor.
    """

    def __init__(
        self, *, in_dim: int, tasks: list[str], hidden: int = 128, depth: int = 1, dropout: float = 0.0
    ):
        super().__init__()
        check_int("in_dim", in_dim)
        check_tasks(tasks)
        check_int("hidden", hidden)
        check_int("depth", depth, minimum=0, note="0 = no trunk, the features pass unchanged")
        check_fraction("dropout", dropout)
        self.in_dim = in_dim
        self.tasks = list(tasks)
        blocks = []
        width = in_dim
        for _ in range(depth):
            blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.trunk = nn.Sequential(*blocks)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_features(x, self.in_dim, "hard_sharing architecture")
        shared = self.trunk(x)
        return {task: shared for task in self.tasks}
