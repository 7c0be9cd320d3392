"""PCGrad: gradient surgery (Yu et al., NeurIPS 2020)."""

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting


class ProjectingConflictingGradients(GramianWeighting):
    """Each task gradient loses its component along every other task gradient it conflicts with.

    For task ``i``, in a random order of the other tasks ``j``: when ``g_i' . g_j < 0``,
    ``g_i' -= (g_i' . g_j) / |g_j|^2 g_j`` (Yu et al. 2020, Alg. 1). The combined gradient
    is ``sum_i g_i'``. Every ``g_i'`` is a combination of the original gradients, so the
    surgery runs on the ``T x T`` Gramian in float64 (coefficients ``C``, ``g_i' = C_i J``,
    ``g_i' . g_j = (C G)_ij``) instead of ``T^2`` passes over ``P`` numbers, and the result is
    ``(1^T C) J``: ``weights()`` reports ``1^T C``. The order comes from torch's random
    generator (one ``randperm`` per task), so a seeded run repeats.
    """

    method = "pcgrad"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        count = gram.shape[0]
        coefficients = np.eye(count)
        for i in range(count):
            for j in torch.randperm(count).tolist():
                if j == i or gram[j, j] <= 0:
                    continue
                dot = float(coefficients[i] @ gram[:, j])
                if dot < 0:
                    coefficients[i, j] -= dot / gram[j, j]
        return coefficients.sum(axis=0)
