"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

import math

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting
from mtmm_plugins.weightings.solvers import nonnegative_qp


def _solution_on_support(gram: np.ndarray, linear: np.ndarray, k: float, support: np.ndarray,
                         tol: float = 1e-9) -> np.ndarray | None:
    """The exact minimiser if its support is ``support``, else None.

    On a fixed support ``S`` the stationarity conditions ``b + (k / lam) G w = nu 1``,
    ``1^T w = 1`` give ``w = p + mu d`` (``mu = lam / k``) with ``p``, ``d`` from two solves of
    the ``S`` block's KKT matrix, and the outer condition ``lam^2 = w^T G w`` is a quadratic in
    ``mu``. The candidate is returned when it is non-negative and no task outside ``S`` has a
    negative multiplier.
    """
    index = np.flatnonzero(support)
    size = index.size
    scale = float(np.abs(np.diag(gram)).max())
    block = gram[np.ix_(index, index)] / scale + size * np.finfo(np.float64).eps * np.eye(size)
    kkt = np.zeros((size + 1, size + 1))
    kkt[:size, :size] = block
    kkt[:size, size] = kkt[size, :size] = 1.0
    try:
        p = np.linalg.solve(kkt, np.r_[np.zeros(size), 1.0])[:size]
        d = np.linalg.solve(kkt, np.r_[-linear[index] / scale, 0.0])[:size]
    except np.linalg.LinAlgError:
        return None
    pp, pd, dd = p @ block @ p, p @ block @ d, d @ block @ d
    # lam = k mu and lam^2 = w^T G w = scale (p + mu d)^T block (p + mu d): a quadratic in mu
    a, b, c = k * k - scale * dd, -2 * scale * pd, -scale * pp
    if abs(a) < 1e-300:
        return None
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    roots = [(-b + sign * np.sqrt(disc)) / (2 * a) for sign in (1, -1)]
    for mu in sorted(r for r in roots if r > 0):
        w = np.zeros(gram.shape[0])
        w[index] = p + mu * d
        if w.min() < -tol:
            continue
        w = np.clip(w, 0, None)
        w /= w.sum()
        gradient = linear + gram @ w / mu
        reduced = gradient - gradient[index].mean()
        if (reduced[~support] >= -tol * (1 + np.abs(gradient).max())).all():
            return w
    return None


def conflict_averse_simplex_weights(gram: np.ndarray, c: float, tol: float = 1e-13) -> np.ndarray:
    """``w`` ``[T]`` on the simplex minimising ``F(w) = w^T G 1 / T + c |g0| sqrt(w^T G w)`` (float64).

    ``G`` = ``gram`` ``[T, T]``, ``|g0| = sqrt(1^T G 1) / T``. Solved exactly: with
    ``sqrt(q) = min_{lam > 0} q / (2 lam) + lam / 2``, for a fixed ``lam`` the problem in ``w``
    is a quadratic program on the simplex (:func:`nonnegative_qp`, exact), and the outer
    minimum over ``lam`` is where ``lam^2 = w(lam)^T G w(lam)``. That root of a monotone
    function is bracketed and narrowed by the Illinois method in ``log lam``; at each step
    the support found is tried for the closed-form solution on it, which ends the search
    as soon as the support is the optimal one (usually at once) and the exact QP at the
    ``lam`` it gives confirms it.
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
    high, low = top + 1e-3, top - 14.0  # below e^-14 |g_max|, w^T G w is rounding noise
    w_high, f_high = inner(high)

    def confirmed(candidate: np.ndarray | None) -> np.ndarray | None:
        """The exact, well-scaled QP's ``w`` at the closed form's ``lam``, if ``lam^2 = w^T G w`` holds there
        (the closed form's own solves lose accuracy with the gradients' conditioning)."""
        if candidate is None:
            return None
        w, f = inner(0.5 * math.log(max(float(candidate @ gram @ candidate), np.finfo(np.float64).tiny)))
        return w if abs(f) <= 1e-10 else None

    exact = confirmed(_solution_on_support(gram, linear, k, w_high > 0))
    if exact is not None:
        return exact
    w_low, f_low = inner(low)
    if f_low >= 0:
        return w_low
    if f_high <= 0:
        return w_high
    w, side, tried = w_high, 0, set()
    for _ in range(200):
        middle = (low * f_high - high * f_low) / (f_high - f_low)
        w, f_middle = inner(middle)
        support = w > 0
        if support.tobytes() not in tried:
            tried.add(support.tobytes())
            exact = confirmed(_solution_on_support(gram, linear, k, support))
            if exact is not None:
                return exact
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
