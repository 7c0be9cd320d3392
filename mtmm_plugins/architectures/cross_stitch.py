"""Cross-stitch networks (Misra et al., CVPR 2016): task towers mixed after every layer."""

import torch
from einops import einsum
from torch import nn

from mtmm_plugins.architectures.checks import check_features, check_tasks
from mtmm_plugins.checks import check_fraction, check_int, check_number


class CrossStitchNetwork(nn.Module):
    """Task towers of equal depth, mixed after each layer by a learned ``T x T`` matrix.

    Every task has ``depth`` blocks of linear-GELU-dropout of width ``hidden``, so
    ``out_dim = hidden``. After layer ``l`` the towers' activations ``h [T, B, hidden]``
    become ``stitches[l] @ h``: row ``t`` of the matrix says how much of every tower task
    ``t`` takes in. Each matrix starts at ``self_weight`` on the diagonal and
    ``(1 - self_weight) / (T - 1)`` elsewhere (rows sum to 1); ``self_weight = 1`` starts
    at the identity, i.e. independent towers.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        tasks: list[str],
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.0,
        self_weight: float = 0.9,
    ):
        super().__init__()
        check_int("in_dim", in_dim)
        check_tasks(tasks)
        check_int("hidden", hidden)
        check_int("depth", depth)
        check_fraction("dropout", dropout)
        check_number("self_weight", self_weight, 0.0, 1.0)
        self.in_dim = in_dim
        self.tasks = list(tasks)
        self.out_dim = hidden
        self.towers = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(nn.Linear(in_dim if layer == 0 else hidden, hidden), nn.GELU(), nn.Dropout(dropout))
                for layer in range(depth)
            )
            for _ in self.tasks
        )
        count = len(self.tasks)
        mix = torch.full((count, count), (1.0 - self_weight) / max(1, count - 1))
        mix.fill_diagonal_(self_weight if count > 1 else 1.0)
        self.stitches = nn.Parameter(mix.repeat(depth, 1, 1))  # [depth, T, T]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_features(x, self.in_dim, "cross_stitch architecture")
        features = [x] * len(self.tasks)
        for layer, stitch in enumerate(self.stitches):
            activations = torch.stack([tower[layer](h) for tower, h in zip(self.towers, features)])  # [T, B, hidden]
            features = list(einsum(stitch, activations, "t s, s b d -> t b d").unbind(0))
        return dict(zip(self.tasks, features))
