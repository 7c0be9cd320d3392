"""IMTL-G: impartial gradient weighting (Liu et al., ICLR 2021)."""

import torch

from mtmm_plugins.weightings.gradient_base import GradientWeighting


class ImpartialGradientWeighting(GradientWeighting):
    """Weights ``alpha`` (summing to 1) so the combined gradient projects equally onto every task's direction.

    With unit directions ``u_i = g_i / |g_i|``: ``g = sum_i alpha_i g_i`` satisfies
    ``g . u_1 = g . u_i`` for all ``i``. Solved as ``alpha_{2:T} = g_1 U^T (D U^T)^+`` with rows
    ``D_i = g_1 - g_i`` and ``U_i = u_1 - u_i``, ``alpha_1 = 1 - sum alpha_{2:T}``.
    """

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        self.check_grads(grads, losses)
        if grads.shape[0] == 1:
            return self.weighted_sum(torch.ones(1, device=grads.device), grads)
        g = grads.double()
        units = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
        differences, unit_differences = g[:1] - g[1:], units[:1] - units[1:]  # [T-1, P] each
        rest = (g[0] @ unit_differences.T) @ torch.linalg.pinv(differences @ unit_differences.T)
        alpha = torch.cat([1 - rest.sum(0, keepdim=True), rest])
        return self.weighted_sum(alpha.float(), grads)
