"""Aligned-MTL: aligning the task gradients' principal components (Senushkin et al., CVPR 2023)."""

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting
from mtmm_plugins.weightings.solvers import gramian_rank


def balance_matrix(gram: np.ndarray, dtype: torch.dtype = torch.float64, length: int = 1) -> np.ndarray:
    """``B`` ``[t, t]`` from the Gramian ``[t, t]`` (float64): ``sqrt(lambda_min) V diag(lambda)^{-1/2} V^T``.

    Only the ``r`` largest eigenvalues are kept, ``r`` = :func:`gramian_rank` (the number of
    independent gradients of ``length`` entries at the precision of ``dtype``); ``lambda_min`` is the smallest
    kept. Rank 0 (every gradient zero) gives ``B = 0``.
    """
    rank = gramian_rank(gram, dtype, length)
    if rank == 0:
        return np.zeros_like(gram)
    eigenvalues, vectors = np.linalg.eigh(gram)
    eigenvalues, vectors = eigenvalues[-rank:], vectors[:, -rank:]
    return np.sqrt(eigenvalues.min()) * (vectors / np.sqrt(eigenvalues)) @ vectors.T


class AlignedMultitask(GramianWeighting):
    """Rescales the task gradients to an orthogonal set of equal norms, then sums them.

    With Gramian ``M = G G^T = V diag(lambda) V^T`` (``G`` = grads ``[T, P]``, eigenvalues above
    a rank tolerance kept): ``B = sqrt(lambda_min) V diag(lambda)^{-1/2} V^T``; the aligned
    gradients ``B G`` are orthogonal with norm ``sqrt(lambda_min)`` (Senushkin et al. 2023,
    Alg. 1). The combined gradient is their sum, ``alpha^T G`` with ``alpha = B 1``
    (``weights()``). The decomposition is in float64 and the rank is judged on the
    normalised Gramian at the gradients' precision (:func:`gramian_rank`), so float32 noise
    in a rank-deficient Gramian (dependent gradients, more tasks than dimensions) is not
    taken for a direction, and a small but genuine direction is not dropped.
    """

    method = "aligned_mtl"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    @staticmethod
    def balance_matrix(gram: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float64) -> np.ndarray:
        """``B`` ``[T, T]`` from the Gramian ``[T, T]``; see :func:`balance_matrix`."""
        gram = gram.double().cpu().numpy() if isinstance(gram, torch.Tensor) else np.asarray(gram, np.float64)
        return balance_matrix(gram, dtype)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        return balance_matrix(gram, dtype, self.gradient_length).sum(axis=1)
