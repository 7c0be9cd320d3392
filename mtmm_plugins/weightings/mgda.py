"""MGDA-UB: the min-norm point of the task gradients (Sener and Koltun, NeurIPS 2018)."""

import torch

from mtmm_plugins.weightings.gradient_base import GradientWeighting, min_norm_weights


class MultipleGradientDescent(GradientWeighting):
    """The combined gradient is the min-norm point ``sum_i alpha_i g_i`` of the tasks' convex hull.

    With ``gradient_mode="representation"`` (default) this is MGDA-UB, the paper's cheap
    upper bound; with "parameters" plain MGDA. ``alpha`` ``[T]`` sums to 1 (``weights()``).
    """

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        self.check_grads(grads, losses)
        alpha = min_norm_weights(grads @ grads.T)
        return self.weighted_sum(alpha.to(grads.device), grads)
