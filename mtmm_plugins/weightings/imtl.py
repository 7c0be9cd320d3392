"""IMTL-G: impartial gradient weighting (Liu et al., ICLR 2021)."""

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting
from mtmm_plugins.weightings.solvers import nonzero_gradients, unit_pseudo_solve


def impartial_weights(gram: np.ndarray, dtype: torch.dtype = torch.float64, length: int = 1) -> np.ndarray:
    """IMTL-G's ``alpha`` ``[t]`` (summing to 1) from the Gramian ``G`` ``[t, t]`` (float64).

    The combined ``g = sum_i alpha_i g_i`` projects equally onto every unit gradient
    ``u_i = g_i / |g_i|``: ``g . u_i = c`` for all ``i``. With ``D = diag |g_i|`` and the
    normalised Gramian ``C = D^-1 G D^-1`` (``C = U U^T``) that is ``C D alpha = c 1``, so
    ``alpha = D^-1 C^+ 1 / (1^T D^-1 C^+ 1)``; the paper's form ``alpha_{2:T} = g_1 U^T (D U^T)^{-1}``
    (eq. 7) is the same system. ``C^+`` keeps the genuine directions
    (:func:`~mtmm_plugins.weightings.solvers.unit_pseudo_solve`: rounding of ``dtype`` gradients
    of ``length`` entries is not a direction). A task whose gradient is zero takes no part and
    gets 0; all zero gives all 0.
    """
    alpha = np.zeros(gram.shape[0])
    nonzero = nonzero_gradients(gram)
    if not nonzero.any():
        return alpha
    scaled = unit_pseudo_solve(gram, np.ones(gram.shape[0]), dtype, length)[nonzero]  # D^-1 C^+ 1
    total = scaled.sum()
    if not np.isfinite(total) or total == 0:
        alpha[nonzero] = 1.0 / nonzero.sum()
    else:
        alpha[nonzero] = scaled / total
    return alpha


class ImpartialGradientWeighting(GramianWeighting):
    """Weights ``alpha`` (summing to 1) so the combined gradient projects equally onto every task's direction.

    With unit directions ``u_i = g_i / |g_i|``: ``g = sum_i alpha_i g_i`` satisfies
    ``g . u_1 = g . u_i`` for all ``i`` (Liu et al. 2021, eq. 5-7). Solved on the Gramian in
    float64 (:func:`impartial_weights`). A task with a zero gradient (e.g. a task whose
    loss does not reach the shared features in this batch) is left out instead of zeroing
    the whole update.
    """

    method = "imtl_g"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        return impartial_weights(gram, dtype, self.gradient_length)
