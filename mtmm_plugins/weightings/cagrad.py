"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

import math

import torch

from mtmm_plugins.weightings.gradient_base import GradientWeighting


class ConflictAverseGradient(GradientWeighting):
    """The update that best improves the worst task within a ball around the mean gradient.

    With ``g0`` the mean task gradient and ``g_w = sum_i w_i g_i``: ``w`` on the simplex
    minimises ``g_w . g0 + c |g0| |g_w|``; the combined gradient is
    ``(g0 + c |g0| / |g_w| g_w) / (1 + c)``. ``c`` in [0, 1) trades the mean against the worst
    task (0 gives the mean). ``w`` is found by exponentiated gradient on the ``T x T`` Gramian.
    """

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation", c: float = 0.4,
                 iterations: int = 200):
        super().__init__(tasks, gradient_mode)
        if not 0 <= c < 1:
            raise ValueError(f"cagrad c must be in [0, 1), got {c}")
        self.c, self.iterations = float(c), int(iterations)

    def simplex_weights(self, gram: torch.Tensor) -> torch.Tensor:
        """``w`` ``[T]`` minimising ``w^T G 1 / T + c |g0| sqrt(w^T G w)``, ``G`` = ``gram`` (float64, CPU)."""
        count = gram.shape[0]
        gram = gram / gram.diagonal().mean().clamp_min(1e-30)  # scale-free: the minimiser does not change
        mean_norm = math.sqrt(max(float(gram.sum()) / count**2, 0.0))
        w = torch.full((count,), 1.0 / count, dtype=torch.float64)
        for _ in range(self.iterations):
            gram_w = gram @ w
            norm_w = math.sqrt(max(float(w @ gram_w), 1e-30))
            slope = gram.sum(dim=1) / count + self.c * mean_norm * gram_w / norm_w
            w = w * torch.exp(-slope)
            w = w / w.sum()
        return w

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        self.check_grads(grads, losses)
        count = grads.shape[0]
        gram = (grads @ grads.T).detach().double().cpu()
        w = self.simplex_weights(gram)
        mean_norm = math.sqrt(max(float(gram.sum()) / count**2, 0.0))
        norm_w = math.sqrt(max(float(w @ gram @ w), 1e-30))
        alpha = (torch.full_like(w, 1.0 / count) + self.c * mean_norm / norm_w * w) / (1 + self.c)
        return self.weighted_sum(alpha.to(grads.device), grads)
