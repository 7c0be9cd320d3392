"""Geometric loss strategy (Chennupati et al., CVPR workshops 2019)."""

import torch

from mtmm_plugins.weightings.base import LossWeighting


class GeometricLossWeighting(LossWeighting):
    """Geometric mean of the losses: ``[T]`` to ``(prod_i L_i) ** (1 / T)``.

    Computed as ``exp(mean_i log max(L_i, eps))`` so a zero loss (a task with no label in
    the batch) gives a finite value and gradient. The effective weight of task ``i``,
    ``d total / d L_i = total / (T * L_i)``, is kept from the last call for ``weights()``.
    """

    def __init__(self, *, tasks: list[str], eps: float = 1e-8):
        super().__init__(tasks)
        self.eps = float(eps)
        self.register_buffer("task_weights", torch.ones(len(self.tasks)), persistent=False)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        self.check_losses(losses)
        clamped = losses.clamp_min(self.eps)
        total = torch.exp(torch.log(clamped).mean())
        with torch.no_grad():
            self.task_weights.copy_(total / (len(self.tasks) * clamped))
        return total

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()
