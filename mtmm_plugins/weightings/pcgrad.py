"""PCGrad: gradient surgery (Yu et al., NeurIPS 2020)."""

import torch

from mtmm_plugins.weightings.gradient_base import GradientWeighting


class ProjectingConflictingGradients(GradientWeighting):
    """Each task gradient loses its component along every other task gradient it conflicts with.

    For task ``i``, in a random order of the other tasks ``j``: when ``g_i' . g_j < 0``,
    ``g_i' -= (g_i' . g_j) / |g_j|^2 g_j``. The combined gradient is ``sum_i g_i'``.
    ``weights()`` stays 1 (the result is not a fixed weighting of the originals).
    """

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        self.check_grads(grads, losses)
        count = grads.shape[0]
        squared_norms = (grads * grads).sum(dim=1).clamp_min(torch.finfo(grads.dtype).tiny)
        projected = grads.clone()
        for i in range(count):
            for j in torch.randperm(count).tolist():
                if j == i:
                    continue
                dot = projected[i] @ grads[j]
                if dot < 0:
                    projected[i] -= dot / squared_norms[j] * grads[j]
        return projected.sum(dim=0)
