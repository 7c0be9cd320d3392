"""Random Loss Weighting (Lin et al., TMLR 2022)."""

import torch

from mtmm_plugins.weightings.base import LossWeighting


class RandomLossWeighting(LossWeighting):
    """Fresh random weights each training step: losses ``[T]`` to ``sum_i w_i L_i`` with ``w = softmax(N(0, I))``.

    The weights sum to 1 (not T). In eval mode every weight is ``1 / T`` (their expectation),
    so validation losses are comparable between steps. ``weights()`` gives the last draw.
    """

    def __init__(self, *, tasks: list[str]):
        super().__init__(tasks)
        self.register_buffer("task_weights", torch.full((len(self.tasks),), 1.0 / len(self.tasks)), persistent=False)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        self.check_losses(losses)
        if self.training:
            self.task_weights.copy_(torch.softmax(torch.randn(len(self.tasks), device=losses.device), dim=0))
            weights = self.task_weights
        else:
            weights = torch.full_like(self.task_weights, 1.0 / len(self.tasks))
        return (weights.to(losses.dtype) * losses).sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()
