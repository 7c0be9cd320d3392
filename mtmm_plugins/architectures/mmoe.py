"""Multi-gate mixture of experts (Ma et al., KDD 2018)."""

import torch
from einops import einsum, rearrange
from torch import nn

from mtmm_plugins.architectures.checks import check_features, check_tasks
from mtmm_plugins.checks import check_fraction, check_int


class MultiGateMixtureOfExperts(nn.Module):
    """Shared experts mixed per task: features ``[B, in_dim]`` to one ``[B, dim]`` per task.

    ``num_experts`` expert MLPs (linear-GELU-dropout-linear, hidden width
    ``expert_hidden``) each map ``x`` to ``[B, dim]``. Every task has its own softmax
    gate over the experts, computed from ``x``; its output is the gate-weighted sum of
    the expert outputs. After each forward, ``last_gate_weights[task]`` holds that
    task's gate weights ``[B, num_experts]`` (detached, for logging).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        tasks: list[str],
        num_experts: int = 4,
        expert_hidden: int = 128,
        dim: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_int("in_dim", in_dim)
        check_tasks(tasks)
        check_int("num_experts", num_experts)
        check_int("expert_hidden", expert_hidden)
        check_int("dim", dim)
        check_fraction("dropout", dropout)
        self.in_dim = in_dim
        self.tasks = list(tasks)
        self.out_dim = dim
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(in_dim, expert_hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(expert_hidden, dim),
            )
            for _ in range(num_experts)
        )
        # All task gates in one layer: output column t * num_experts + e is task t's score for expert e.
        self.gates = nn.Linear(in_dim, len(self.tasks) * num_experts)
        self.last_gate_weights: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_features(x, self.in_dim, "mmoe architecture")
        expert_outputs = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, dim]
        gate_scores = rearrange(self.gates(x), "b (t e) -> t b e", t=len(self.tasks))
        gate_weights = gate_scores.softmax(dim=-1)  # [T, B, E]
        mixed = einsum(gate_weights, expert_outputs, "t b e, b e d -> t b d")
        self.last_gate_weights = {task: gate_weights[i].detach() for i, task in enumerate(self.tasks)}
        return {task: mixed[i] for i, task in enumerate(self.tasks)}
