"""Customized gate control and progressive layered extraction (Tang et al., RecSys 2020)."""

import math

import torch
from einops import einsum
from torch import nn
from torch.nn import functional as F

from mtmm_plugins.architectures.checks import check_features, check_tasks
from mtmm_plugins.checks import check_fraction, check_int


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """A parameter initialised like ``nn.Linear``'s: uniform in ``+-1/sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class ExpertBank(nn.Module):
    """``count`` expert MLPs (linear-GELU-dropout-linear) evaluated together, each on its own input.

    ``forward(x [count, B, in_dim]) -> [count, B, dim]``: expert ``e`` reads ``x[e]``. Batching
    the experts makes one matmul per layer, and every expert gets a gradient (zeros when
    its task's head ignores it) rather than none.
    """

    def __init__(self, count: int, in_dim: int, hidden: int, dim: int, dropout: float):
        super().__init__()
        self.weight_in, self.bias_in = _uniform((count, in_dim, hidden), in_dim), _uniform((count, hidden), in_dim)
        self.weight_out, self.bias_out = _uniform((count, hidden, dim), hidden), _uniform((count, dim), hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(einsum(x, self.weight_in, "e b i, e i h -> e b h") + self.bias_in[:, None])
        return einsum(self.dropout(hidden), self.weight_out, "e b h, e h d -> e b d") + self.bias_out[:, None]


class ExtractionLevel(nn.Module):
    """One CGC level: ``task_experts`` experts per task and ``shared_experts`` shared ones, a softmax gate per task.

    The experts are numbered task by task (task ``t`` owns ``t * task_experts`` up to the next
    task's), then the shared ones. Task ``t``'s experts and gate read task ``t``'s input; the
    shared experts read the shared input. Task ``t``'s gate weighs its own experts and the
    shared ones. With ``shared_gate``, a gate over every expert, computed from the shared
    input, gives the shared input of the next level.
    """

    def __init__(self, in_dim: int, num_tasks: int, shared_experts: int, task_experts: int, expert_hidden: int,
                 dim: int, dropout: float, shared_gate: bool):
        super().__init__()
        self.num_tasks, self.shared_experts, self.task_experts = num_tasks, shared_experts, task_experts
        total = num_tasks * task_experts + shared_experts
        self.experts = ExpertBank(total, in_dim, expert_hidden, dim, dropout)
        gate_width = task_experts + shared_experts
        self.gate_weight = _uniform((num_tasks, in_dim, gate_width), in_dim)  # one linear gate per task
        self.gate_bias = _uniform((num_tasks, gate_width), in_dim)
        self.shared_gate = nn.Linear(in_dim, total) if shared_gate else None
        own = torch.arange(num_tasks)[:, None] * task_experts + torch.arange(task_experts)  # [T, task_experts]
        shared = torch.arange(shared_experts).expand(num_tasks, -1) + num_tasks * task_experts
        self.register_buffer("candidates", torch.cat([own, shared], dim=1), persistent=False)  # [T, gate_width]

    def forward(self, task_inputs: torch.Tensor, shared_input: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Task inputs ``[T, B, in]`` and shared input ``[B, in]`` to the task outputs ``[T, B, dim]``,
        the next shared input ``[B, dim]`` (or None) and the task gate weights ``[T, B, gate_width]``."""
        expert_inputs = torch.cat([task_inputs.repeat_interleave(self.task_experts, dim=0),
                                   shared_input.expand(self.shared_experts, *shared_input.shape)])
        outputs = self.experts(expert_inputs)  # [E, B, dim]
        scores = einsum(task_inputs, self.gate_weight, "t b i, t i n -> t b n") + self.gate_bias[:, None]
        weights = scores.softmax(dim=-1)
        mixed = einsum(weights, outputs[self.candidates], "t b n, t n b d -> t b d")
        shared_next = None
        if self.shared_gate is not None:
            shared_next = einsum(self.shared_gate(shared_input).softmax(dim=-1), outputs, "b e, e b d -> b d")
        return mixed, shared_next, weights


class ProgressiveLayeredExtraction(nn.Module):
    """Stacked CGC levels of shared and task-specific experts: features ``[B, in_dim]`` to one ``[B, dim]`` per task.

    Each level has ``shared_experts`` experts used by every task and ``task_experts`` experts
    of each task's own (MLPs linear-GELU-dropout-linear, hidden width ``expert_hidden``,
    output ``dim``). Task ``t``'s softmax gate mixes its own experts with the shared ones.
    A level below the top also mixes all its experts for the shared path of the next level;
    each level reads the outputs of the one below (the first reads ``x``). ``levels = 1`` is
    CGC. Either expert count may be 0, not both. After each forward, ``last_gate_weights[task]``
    holds the top level's gate weights ``[B, task_experts + shared_experts]`` (own experts first; detached).
    """

    label = "ple architecture"

    def __init__(
        self,
        *,
        in_dim: int,
        tasks: list[str],
        levels: int = 2,
        shared_experts: int = 2,
        task_experts: int = 1,
        expert_hidden: int = 128,
        dim: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_int("in_dim", in_dim)
        check_tasks(tasks)
        check_int("levels", levels)
        check_int("shared_experts", shared_experts, minimum=0, note="0 = no expert shared between tasks")
        check_int("task_experts", task_experts, minimum=0, note="0 = only shared experts, as in mmoe")
        if shared_experts + task_experts < 1:
            raise ValueError("every task gate needs an expert: shared_experts + task_experts must be at least 1, "
                             f"got shared_experts={shared_experts}, task_experts={task_experts}")
        check_int("expert_hidden", expert_hidden)
        check_int("dim", dim)
        check_fraction("dropout", dropout)
        self.in_dim = in_dim
        self.tasks = list(tasks)
        self.out_dim = dim
        self.levels = nn.ModuleList(
            ExtractionLevel(in_dim if level == 0 else dim, len(self.tasks), shared_experts, task_experts,
                            expert_hidden, dim, dropout, shared_gate=level < levels - 1)
            for level in range(levels)
        )
        self.last_gate_weights: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_features(x, self.in_dim, self.label)
        task_inputs, shared = x.expand(len(self.tasks), *x.shape), x
        for level in self.levels:
            task_inputs, shared, weights = level(task_inputs, shared)
        self.last_gate_weights = {task: w.detach() for task, w in zip(self.tasks, weights)}
        return dict(zip(self.tasks, task_inputs.unbind(0)))


class CustomizedGateControl(ProgressiveLayeredExtraction):
    """Customized gate control (CGC): one level of shared and task-specific experts, gated per task.

    The same as ``ple`` with ``levels: 1``; see :class:`ProgressiveLayeredExtraction`.
    """

    label = "cgc architecture"

    def __init__(
        self,
        *,
        in_dim: int,
        tasks: list[str],
        shared_experts: int = 2,
        task_experts: int = 1,
        expert_hidden: int = 128,
        dim: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__(in_dim=in_dim, tasks=tasks, levels=1, shared_experts=shared_experts,
                         task_experts=task_experts, expert_hidden=expert_hidden, dim=dim, dropout=dropout)
