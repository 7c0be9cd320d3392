"""Soft parameter sharing: one tower per task, pulled towards each other by a coupling penalty."""

import torch
from torch import nn

from mtmm_plugins.architectures.checks import check_features, check_tasks
from mtmm_plugins.checks import check_fraction, check_int, check_number


class SoftParameterSharing(nn.Module):
    """One MLP tower per task over the shared features, coupled by an L2 penalty on their parameters.

    Each task's tower is ``depth`` blocks of linear-GELU-dropout of width ``hidden``
    (``hidden_per_task`` may set a task's own width), so ``out_dim = hidden``.
    :meth:`regularization` returns ``coupling * sum_i ||theta_i - mean(theta)||^2``, summed
    over the towers' corresponding parameters (``theta_i``: tower ``i``'s copy of a
    parameter, the mean taken over the towers); the model adds it to the loss. Since the
    penalty compares corresponding parameters, every tower must have the same shapes:
    towers of different widths are refused with an error naming them.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        tasks: list[str],
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.0,
        coupling: float = 1e-3,
        hidden_per_task: dict[str, int] | None = None,
    ):
        super().__init__()
        check_int("in_dim", in_dim)
        check_tasks(tasks)
        check_int("hidden", hidden)
        check_int("depth", depth)
        check_fraction("dropout", dropout)
        check_number("coupling", coupling, 0.0)
        widths = _tower_widths(list(tasks), hidden, hidden_per_task or {})
        self.in_dim = in_dim
        self.tasks = list(tasks)
        self.coupling = float(coupling)
        self.out_dim = widths[self.tasks[0]]
        self.towers = nn.ModuleList(_tower(in_dim, self.out_dim, depth, dropout) for _ in self.tasks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_features(x, self.in_dim, "soft_sharing architecture")
        return {task: tower(x) for task, tower in zip(self.tasks, self.towers)}

    def regularization(self) -> torch.Tensor:
        """The coupling penalty ``[]``: ``coupling * sum_i ||theta_i - mean(theta)||^2`` over the towers."""
        total = torch.zeros((), device=next(self.parameters()).device)
        for copies in zip(*(tower.parameters() for tower in self.towers)):
            stacked = torch.stack(copies).float()  # [T, *shape]: one copy of this parameter per tower
            total = total + (stacked - stacked.mean(dim=0)).pow(2).sum()
        return self.coupling * total


def _tower(in_dim: int, width: int, depth: int, dropout: float) -> nn.Sequential:
    blocks = []
    for index in range(depth):
        blocks += [nn.Linear(in_dim if index == 0 else width, width), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*blocks)


def _tower_widths(tasks: list[str], hidden: int, per_task: dict[str, int]) -> dict[str, int]:
    """Each task's tower width; raises ValueError for unknown tasks or towers of different widths."""
    if not isinstance(per_task, dict):
        raise ValueError(f"hidden_per_task must map task names to widths, got {per_task!r}")
    unknown = sorted(set(per_task) - set(tasks))
    if unknown:
        raise ValueError(f"hidden_per_task names unknown tasks: {', '.join(unknown)}; the tasks are {', '.join(tasks)}")
    for task, width in per_task.items():
        check_int(f"hidden_per_task.{task}", width)
    widths = {task: per_task.get(task, hidden) for task in tasks}
    if len(set(widths.values())) > 1:
        groups: dict[int, list[str]] = {}
        for task, width in widths.items():
            groups.setdefault(width, []).append(task)
        described = "; ".join(f"width {width}: {', '.join(names)}" for width, names in sorted(groups.items()))
        raise ValueError("soft_sharing couples the towers' corresponding parameters, so every tower needs the "
                         f"same shape; these towers differ ({described})")
    return widths
