"""MGDA-UB: the min-norm point of the task gradients (Sener and Koltun, NeurIPS 2018)."""

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting
from mtmm_plugins.weightings.solvers import min_norm_weights


class MultipleGradientDescent(GramianWeighting):
    """The combined gradient is the min-norm point ``sum_i alpha_i g_i`` of the tasks' convex hull.

    ``alpha = argmin_{alpha >= 0, sum alpha = 1} alpha^T G alpha`` (Sener and Koltun 2018,
    eq. 3; Désidéri's MGDA), solved exactly on the Gramian in float64 by an active-set
    method (:func:`~mtmm_plugins.weightings.solvers.min_norm_weights`), so the answer holds
    whatever the ratio of the gradients' norms. With ``gradient_mode="representation"``
    (default) this is MGDA-UB, the paper's cheap upper bound; with "parameters" plain MGDA.
    ``alpha`` ``[T]`` sums to 1 (``weights()``).
    """

    method = "mgda"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        return min_norm_weights(gram)
