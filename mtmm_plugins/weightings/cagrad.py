"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

import math

import numpy as np
import torch

from mtmm_plugins.weightings.gradient_base import GramianWeighting
from mtmm_plugins.weightings.solvers import nonnegative_qp


def conflict_averse_simplex_weights(gram: np.ndarray, c: float, tol: float = 1e-13) -> np.ndarray:
    """``w`` ``[T]`` on the simplex minimising ``F(w) = w^T G 1 / T + c |g0| sqrt(w^T G w)`` (float64).

    ``G`` = ``gram`` ``[T, T]``, ``|g0| = sqrt(1^T G 1) / T``. Solved exactly: with
    ``sqrt(q) = min_{lam > 0} q / (2 lam) + lam / 2``, for a fixed ``lam`` the problem in ``w``
    is a quadratic program on the simplex (:func:`nonnegative_qp`, exact), and the outer
    minimum over ``lam`` is where ``lam^2 = w(lam)^T G w(lam)``; that root of a monotone
    function is bracketed and found by the Illinois method in ``log lam`` to ``tol``.
    """
    count = gram.shape[0]
    linear = gram.sum(axis=1) / count
    k = c * math.sqrt(max(float(gram.sum()), 0.0)) / count
    if k <= 0:  # c = 0 or g0 = 0: F is linear, minimised at a vertex
        return np.eye(count)[int(np.argmin(linear))]

    def inner(log_lam: float) -> tuple[np.ndarray, float]:
        w = nonnegative_qp(gram * (k / math.exp(log_lam)), linear, simplex=True)
        return w, 1.0 - float(w @ gram @ w) / math.exp(2 * log_lam)  # sign of dF/dlam: increasing in lam

    top = math.log(math.sqrt(max(float(np.diag(gram).max()), np.finfo(np.float64).tiny)))
    high, (w_high, f_high) = top + 1e-3, inner(top + 1e-3)
    # lam down to e^-14 |g_max| (lam^2 ~ 7e-13 max G_ii): below that w^T G w is rounding noise
    low = top - 14.0
    w_low, f_low = inner(low)
    if f_low >= 0:
        return w_low
    if f_high <= 0:
        return w_high
    w, side = w_high, 0
    for _ in range(200):
        middle = (low * f_high - high * f_low) / (f_high - f_low)
        w, f_middle = inner(middle)
        if f_middle == 0 or high - low <= tol * max(1.0, abs(high)):
            break
        if f_middle < 0:
            low, f_low = middle, f_middle
            if side == -1:
                f_high /= 2
            side = -1
        else:
            high, f_high = middle, f_middle
            if side == 1:
                f_low /= 2
            side = 1
    return w


class ConflictAverseGradient(GramianWeighting):
    """The update that best improves the worst task within a ball around the mean gradient.

    With ``g0`` the mean task gradient and ``g_w = sum_i w_i g_i``: ``w`` on the simplex
    minimises ``g_w . g0 + c |g0| |g_w|`` (Liu et al. 2021, eq. 7's dual); the combined
    gradient is ``(g0 + c |g0| / |g_w| g_w) / (1 + c)`` (the official code's ``rescale=1``).
    ``c`` in [0, 1) trades the mean against the worst task (0 gives the mean). ``w`` is
    found exactly on the ``T x T`` Gramian in float64
    (:func:`conflict_averse_simplex_weights`), whatever the ratio of the gradients' norms.
    """

    method = "cagrad"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation", c: float = 0.4):
        super().__init__(tasks, gradient_mode)
        if not 0 <= c < 1:
            raise ValueError(f"cagrad c must be in [0, 1), got {c}")
        self.c = float(c)

    def simplex_weights(self, gram: torch.Tensor | np.ndarray) -> np.ndarray:
        """``w`` ``[T]`` for the Gramian ``[T, T]``; see :func:`conflict_averse_simplex_weights`."""
        gram = gram.double().cpu().numpy() if isinstance(gram, torch.Tensor) else np.asarray(gram, np.float64)
        return conflict_averse_simplex_weights(gram, self.c)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        count = gram.shape[0]
        w = conflict_averse_simplex_weights(gram, self.c)
        mean_norm = math.sqrt(max(float(gram.sum()), 0.0)) / count
        norm_w = math.sqrt(max(float(w @ gram @ w), 0.0))
        pull = self.c * mean_norm / norm_w if norm_w > 0 else 0.0
        return (np.full(count, 1.0 / count) + pull * w) / (1 + self.c)
