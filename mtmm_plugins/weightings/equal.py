"""Equal weighting: every task counts once."""

import torch

from mtmm_core.weighting_bases import LossWeighting


class EqualWeighting(LossWeighting):
    """Sum of the task losses: losses ``[T]`` to their sum ``[]``, each weighted 1.

    A sum, not a mean: adding a task adds its loss at full strength. A task absent from
    the batch (``present`` False) adds nothing.
    """

    method = "equal"  # the registered name, for messages

    def __init__(self, *, tasks: list[str]):
        super().__init__(tasks)
        self.register_buffer("task_weights", torch.ones(len(self.tasks)), persistent=False)

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        return losses.where(self.present_mask(losses, present), 0.0).sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()
