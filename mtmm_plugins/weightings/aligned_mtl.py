"""Aligned-MTL: aligning the task gradients' principal components (Senushkin et al., CVPR 2023)."""

import torch

from mtmm_plugins.weightings.gradient_base import GradientWeighting


class AlignedMultitask(GradientWeighting):
    """Rescales the task gradients to an orthogonal set of equal norms, then sums them.

    With Gramian ``M = G G^T = V diag(lambda) V^T`` (``G`` = grads ``[T, P]``, eigenvalues above
    a rank tolerance kept): ``B = sqrt(lambda_min) V diag(lambda)^{-1/2} V^T``; the aligned
    gradients ``B G`` are orthogonal with norm ``sqrt(lambda_min)``. The combined gradient is
    their sum, ``alpha^T G`` with ``alpha = B 1`` (``weights()``).
    """

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    @staticmethod
    def balance_matrix(gram: torch.Tensor) -> torch.Tensor:
        """``B`` ``[T, T]`` from the Gramian ``[T, T]`` (float64)."""
        eigenvalues, vectors = torch.linalg.eigh(gram)
        tol = eigenvalues.max().clamp_min(0) * gram.shape[0] * torch.finfo(gram.dtype).eps
        keep = eigenvalues > tol
        if not bool(keep.any()):
            return torch.zeros_like(gram)
        eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
        return eigenvalues.min().sqrt() * (vectors * eigenvalues.rsqrt()) @ vectors.T

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        self.check_grads(grads, losses)
        balance = self.balance_matrix((grads @ grads.T).double())
        return self.weighted_sum(balance.sum(dim=1).float(), grads)
