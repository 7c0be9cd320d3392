"""Static weighting: fixed, user-chosen weights."""

import math

import torch

from mtmm_core.weighting_bases import LossWeighting


class StaticWeighting(LossWeighting):
    """Fixed weighted sum: losses ``[T]`` to ``sum_i w_i * L_i`` ``[]``.

    ``weights`` is either a list with one weight per task (in task order) or a dict
    from task name to weight, where tasks left out keep weight 1. Weights must be
    finite and >= 0.
    """

    method = "static"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], weights: dict[str, float] | list[float]):
        super().__init__(tasks)
        if isinstance(weights, dict):
            unknown = [name for name in weights if name not in self.tasks]
            if unknown:
                raise ValueError(
                    f"static weights name unknown tasks {', '.join(map(str, unknown))}; "
                    f"tasks: {', '.join(self.tasks)}"
                )
            values = [float(weights.get(task, 1.0)) for task in self.tasks]
        elif isinstance(weights, (list, tuple)):
            if len(weights) != len(self.tasks):
                raise ValueError(
                    f"static weights has {len(weights)} entries but there are {len(self.tasks)} tasks "
                    f"({', '.join(self.tasks)}); give one weight per task"
                )
            values = [float(weight) for weight in weights]
        else:
            raise ValueError(f"static weights must be a list or a dict of task -> weight, got {weights!r}")
        for task, value in zip(self.tasks, values):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"static weight of task {task!r} must be finite and >= 0, got {value}")
        self.register_buffer("task_weights", torch.tensor(values))

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        terms = self.task_weights.to(losses.dtype) * losses
        return terms.where(self.present_mask(losses, present), 0.0).sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()
