"""Geometric loss strategy (Chennupati et al., CVPR workshops 2019)."""

import torch

from mtmm_core.weighting_bases import LossWeighting


class GeometricLossWeighting(LossWeighting):
    """Geometric mean of the present tasks' losses: ``[T]`` to ``(prod_{i present} L_i) ** (1 / t)``.

    Computed as ``exp(mean_i log max(L_i, eps))`` over the ``t`` tasks present in the batch
    (an absent task's loss of 0 would otherwise pull the mean to ``eps``). The effective
    weight of task ``i``, ``d total / d L_i = total / (t * L_i)``, is kept from the last
    call for ``weights()`` (0 for an absent task).
    """

    method = "gls"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], eps: float = 1e-8):
        super().__init__(tasks)
        self.eps = float(eps)
        self.register_buffer("task_weights", torch.ones(len(self.tasks)), persistent=False)

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        mask = self.present_mask(losses, present)
        count = mask.sum().clamp_min(1)
        clamped = losses.where(mask, 1.0).clamp_min(self.eps)
        total = torch.exp(torch.log(clamped).where(mask, 0.0).sum() / count).where(mask.any(), 0.0)
        with torch.no_grad():
            self.task_weights.copy_((total / (count * clamped)).where(mask, 0.0))
        return total

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()
