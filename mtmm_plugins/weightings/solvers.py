"""Exact solvers on the tiny ``T x T`` Gramian ``G = J J^T`` of the task gradients ``J [T, P]``.

The gradient-level methods reduce to small problems in ``T`` unknowns. Solved here exactly
(an active-set method finishes in a finite number of steps; Newton converges
quadratically), in float64 with NumPy whatever the gradients' dtype, so the answer does not
depend on how differently the tasks' gradients are scaled.

- :func:`nonnegative_qp`: ``min 1/2 x^T Q x + c^T x`` over ``x >= 0`` (optionally also
  ``sum x = 1``): MGDA, UPGrad, DualProj, and CAGrad's inner problem.
- :func:`min_norm_weights`: MGDA's min-norm point of the convex hull.
- :func:`power_balance_weights`: ``G w = w^(-p)`` with ``w > 0``: Nash-MTL (``p = 1``) and
  FairGrad (``p = 1 / alpha``).
- :func:`normalised_gramian`, :func:`gramian_rank` and :func:`unit_pseudo_solve` (the Gramian
  itself is ``mtmm_core.weighting_bases.gramian``): the independent directions it
  holds at the gradients' precision, and the pseudo-inverse on them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

EPS64 = float(np.finfo(np.float64).eps)


def rank_tolerance(eigenvalues: np.ndarray, dtype: torch.dtype, size: int, length: int = 1) -> float:
    """Eigenvalues of a Gramian at or below this are noise: ``max |lambda| * size * eps(dtype) * sqrt(length)``.

    A Gramian computed from ``dtype`` gradients of ``length`` entries carries relative errors
    of order ``eps(dtype)``, growing like ``sqrt(length)`` as the dot products' rounding
    errors add up (measured on dependent float32 gradients: about 9, 34 and 246 ``eps`` at
    1e5, 1e6 and 4e6 entries), so a cut-off at float64's epsilon would count that noise as
    a direction.
    """
    scale = float(np.abs(eigenvalues).max(initial=0.0))
    return scale * max(size, 1) * float(torch.finfo(dtype).eps) * max(1.0, float(length)) ** 0.5


def nonzero_gradients(gram: np.ndarray) -> np.ndarray:
    """Bool ``[t]``: the tasks whose gradient is not zero (``|g_i| > 1e-20 max_j |g_j|``)."""
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    return norms > 1e-20 * norms.max(initial=0.0) if norms.max(initial=0.0) > 0 else np.zeros(len(norms), bool)


class NormalisedGramian(NamedTuple):
    """The non-zero gradients' normalised Gramian ``C = D^-1 G D^-1``, reduced to its genuine directions."""

    nonzero: np.ndarray  #: bool ``[t]``: the tasks with a non-zero gradient
    norms: np.ndarray  #: ``[n]``: their norms ``|g_i|`` (``D``)
    eigenvalues: np.ndarray  #: ``[r]``: the ``r`` largest eigenvalues of ``C`` (``r`` = the rank)
    basis: np.ndarray  #: ``[n, r]``: their eigenvectors


def normalised_gramian(gram: np.ndarray, dtype: torch.dtype, length: int = 1) -> NormalisedGramian:
    """``C = D^-1 G D^-1`` over the non-zero gradients (``D = diag |g_i|``), keeping its genuine directions.

    The rank is read off ``C``, whose rounding errors are of order ``eps(dtype)`` in every
    entry whatever the norms: the eigenvalues of ``G`` itself mix the tasks' scales, so a
    cut-off relative to its largest one would drop a genuine direction of a gradient 1e4
    times smaller than another. Eigenvalues at or below :func:`rank_tolerance` (``length`` =
    the number of entries ``P`` of each gradient) are dropped.
    """
    nonzero = nonzero_gradients(gram)
    norms = np.sqrt(np.diag(gram)[nonzero])
    if not nonzero.any():
        return NormalisedGramian(nonzero, norms, np.zeros(0), np.zeros((0, 0)))
    normalised = gram[np.ix_(nonzero, nonzero)] / np.outer(norms, norms)
    eigenvalues, vectors = np.linalg.eigh((normalised + normalised.T) / 2)  # ascending
    keep = eigenvalues > rank_tolerance(eigenvalues, dtype, len(norms), length)
    return NormalisedGramian(nonzero, norms, eigenvalues[keep], vectors[:, keep])


def gramian_rank(gram: np.ndarray, dtype: torch.dtype, length: int = 1) -> int:
    """The number of independent gradients among the non-zero ones, judged at ``dtype``'s precision
    (:func:`normalised_gramian`)."""
    return len(normalised_gramian(gram, dtype, length).eigenvalues)


def unit_pseudo_solve(gram: np.ndarray, rhs: np.ndarray, dtype: torch.dtype, length: int = 1) -> np.ndarray:
    """``c = D^-1 C^+ rhs`` ``[t]`` (0 for a zero gradient): ``J^T c = pinv(U) rhs`` for the unit gradients ``U``.

    ``C^+`` is the pseudo-inverse of the normalised Gramian on its genuine directions
    (:func:`normalised_gramian`); IMTL-G (``rhs = 1``) and ConFIG (``rhs`` = preferences) use it.
    """
    reduced = normalised_gramian(gram, dtype, length)
    solution = np.zeros(gram.shape[0])
    if len(reduced.eigenvalues):
        basis = reduced.basis
        inverse = basis @ ((basis.T @ np.asarray(rhs, np.float64)[reduced.nonzero]) / reduced.eigenvalues)
        solution[reduced.nonzero] = inverse / reduced.norms
    return solution


def nonnegative_qp(quadratic: np.ndarray, linear: np.ndarray, *, simplex: bool = False,
                   tol: float = 1e-12, max_iterations: int | None = None) -> np.ndarray:
    """``x`` ``[n]`` minimising ``1/2 x^T Q x + c^T x`` subject to ``x >= 0`` (and ``sum x = 1`` if ``simplex``).

    ``Q`` ``[n, n]`` symmetric positive semi-definite, ``c`` ``[n]``. A primal active-set
    method (Lawson and Hanson's for non-negative least squares, with the simplex's equality
    row added to the face problems): exact up to rounding, at most a few ``n`` face solves.
    It runs on ``y = D x`` with ``D = sqrt(diag Q)``, so ``Q`` has a unit diagonal and the
    optimality test is relative to each coordinate's own scale (a gradient 1e6 times smaller
    than another is treated as carefully), and with a ridge of ``n * eps`` so every face
    problem has one solution (the objective changes by less than rounding).
    Without ``simplex`` the problem must be bounded below (``c`` in the range of ``Q``, or
    ``Q`` definite), as it is for every caller here.
    """
    q = np.array(quadratic, dtype=np.float64)
    c = np.array(linear, dtype=np.float64)
    n = c.shape[0]
    if q.shape != (n, n):
        raise ValueError(f"nonnegative_qp: Q must be [{n}, {n}], got {list(q.shape)}")
    diagonal = np.diag(q).copy()
    d = np.sqrt(np.where(diagonal > 0, diagonal, 1.0))
    q = (q + q.T) / 2 / np.outer(d, d)
    c = c / d
    a = 1.0 / d  # the simplex row sum x = 1 is a^T y = 1
    q[np.diag_indices(n)] += n * EPS64
    threshold = tol * (1.0 + float(np.abs(c).max(initial=0.0)))
    limit = max_iterations or 10 * n + 50

    def face_minimiser(face: np.ndarray) -> np.ndarray:
        index = np.flatnonzero(face)
        z = np.zeros(n)
        if simplex:
            k = index.size
            kkt = np.zeros((k + 1, k + 1))
            kkt[:k, :k] = q[face][:, face]
            kkt[:k, k] = kkt[k, :k] = a[index]
            rhs = np.concatenate([-c[index], [1.0]])
            z[index] = np.linalg.solve(kkt, rhs)[:k]
        elif index.size:
            z[index] = np.linalg.solve(q[face][:, face], -c[index])
        return z

    free = np.zeros(n, dtype=bool)
    y = np.zeros(n)
    if not simplex:  # a guess that is often the answer: every constraint violated at 0, at once
        guess = c < -threshold
        if guess.any():
            z = face_minimiser(guess)
            if (z[guess] > 0).all():
                free, y = guess, z
    if simplex:
        start = int(np.argmin(0.5 * np.diag(q) / a**2 + c / a))  # the best vertex x = e_j
        free[start], y[start] = True, 1.0 / a[start]

    for _ in range(limit):
        gradient = q @ y + c
        if simplex:  # minus the equality row's multiplier, nu = the least-squares fit of gradient_F = nu a_F
            gradient = gradient - a * (gradient[free] @ a[free]) / (a[free] @ a[free])
        candidates = np.where(free, np.inf, gradient)
        entering = int(np.argmin(candidates))
        if not candidates[entering] < -threshold:
            return y / d  # every constraint's multiplier is >= 0: optimal
        free[entering] = True
        for _ in range(limit):
            z = face_minimiser(free)
            if (z[free] > 0).all():
                y = z
                break
            if z[entering] <= 0 and y[entering] == 0:  # rounding: the entering index cannot move
                free[entering] = False
                return y / d
            blocking = free & (z <= 0)
            steps = y[blocking] / (y[blocking] - z[blocking])
            y = y + steps.min() * (z - y)
            free &= y > n * EPS64 * np.abs(y).max(initial=0.0)
            y[~free] = 0.0
            if simplex:
                y /= a @ y
    return y / d


def min_norm_weights(gram: np.ndarray) -> np.ndarray:
    """MGDA: ``alpha`` ``[T]`` on the simplex minimising ``|sum_i alpha_i g_i|^2 = alpha^T G alpha``."""
    gram = np.asarray(gram, dtype=np.float64)
    return nonnegative_qp(gram, np.zeros(gram.shape[0]), simplex=True)


def power_balance_weights(gram: np.ndarray, power: float, max_iterations: int = 100) -> np.ndarray:
    """``w > 0`` ``[T]`` with ``G w = w^(-power)`` elementwise (``power > 0``), by Newton's method.

    It is the minimiser of the strictly convex ``1/2 w^T G w - sum_i phi(w_i)`` with
    ``phi'(w) = w^(-power)`` (``phi = log`` for ``power = 1``). ``G`` is first scaled to a unit
    diagonal maximum ``s`` (the answer for ``s G`` is ``s^(-1 / (1 + power))`` times the one for
    ``G``), and the iteration starts from ``G_ii^(-1 / (1 + power))``, the answer for orthogonal
    gradients (:func:`_balance_newton`). Far from ``power = 1`` with norms spread over many
    decades that start can leave a task that contributes little stuck at a wrong weight; the
    solve is then repeated from ``w_1^(2 / (1 + power))``, ``w_1`` the answer for ``power = 1``
    (exact for orthogonal gradients too), and the better of the two is returned. The problem
    has no solution when a zero gradient or cancelling gradients let the objective fall for
    ever (``w`` then grows): Nash-MTL and FairGrad leave such tasks out first.
    """
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    g = np.asarray(gram, dtype=np.float64)
    scale = max(float(np.abs(np.diag(g)).max(initial=0.0)), np.finfo(np.float64).tiny)
    g = (g + g.T) / (2 * scale)
    start = np.maximum(np.diag(g), EPS64) ** (-1 / (1 + power))
    w, error = _balance_newton(g, power, start, max_iterations)
    if error > 4 * len(start) * EPS64 and power != 1:
        nash, _ = _balance_newton(g, 1.0, np.maximum(np.diag(g), EPS64) ** -0.5, max_iterations)
        other, other_error = _balance_newton(g, power, nash ** (2 / (1 + power)), max_iterations)
        if other_error < error:
            w = other
    return w * scale ** (-1 / (1 + power))


def _balance_newton(g: np.ndarray, power: float, w: np.ndarray, max_iterations: int) -> tuple[np.ndarray, float]:
    """Newton's method for ``G w = w^(-p)`` from ``w > 0``; the best iterate and its :func:`_balance_error`.

    Far from the solution (backward error above 0.1, or where a full step would not lower it)
    each step is damped to keep ``w`` positive and to decrease the objective (or, below the
    objective's rounding, the error); near it, full steps converge quadratically. It stops at a
    backward error of ``4 T eps64`` or when, near the answer, that has not fallen for three steps.
    """
    def objective(w: np.ndarray) -> float:
        barrier = np.log(w) if power == 1 else w ** (1 - power) / (1 - power)
        return 0.5 * float(w @ g @ w) - float(barrier.sum())

    target = 4 * w.shape[0] * EPS64
    best, best_error, stalled = w, _balance_error(g, power, w), 0
    with np.errstate(all="ignore"):
        for _ in range(max_iterations):
            if best_error <= target or stalled >= 3:
                break
            gradient = g @ w - w ** (-power)
            hessian = g + np.diag(power * w ** (-power - 1))
            jacobi = 1.0 / np.sqrt(np.diag(hessian))  # the system solved at unit diagonal
            step = -jacobi * np.linalg.solve(hessian * np.outer(jacobi, jacobi), jacobi * gradient)
            shrinking = step < 0
            t = min(1.0, 0.9 * float((-w[shrinking] / step[shrinking]).min())) if shrinking.any() else 1.0
            error = _balance_error(g, power, w)
            if not (error < 0.1 and _balance_error(g, power, w + t * step) < error):
                decrement, value = float(-gradient @ step), objective(w)
                if decrement > 1e3 * EPS64 * (1 + abs(value)):  # the objective can tell: Armijo on it
                    while t > 1e-12 and not objective(w + t * step) <= value - 0.25 * t * decrement:
                        t /= 2
                else:  # below the objective's rounding: backtrack on the error instead
                    while t > 1e-12 and not _balance_error(g, power, w + t * step) < error:
                        t /= 2
            w = w + t * step
            error = _balance_error(g, power, w)
            if error < best_error:
                best, best_error, stalled = w, error, 0
            elif best_error < 0.1:  # far from the answer the damped steps lower the objective, not the error
                stalled += 1
    return best, best_error


def _balance_error(gram: np.ndarray, power: float, w: np.ndarray) -> float:
    """The backward error of ``G w = w^(-p)``: ``max_i |(G w)_i - w_i^(-p)| / ((|G| w)_i + w_i^(-p))``.

    Relative to ``w_i^(-p)`` alone it can be unattainable in float64: for large ``p`` a task
    whose ``g_i . d = w_i^(-p)`` is tiny next to the other terms of ``(G w)_i`` is a cancellation.
    """
    rhs = w ** (-power)
    return float((np.abs(gram @ w - rhs) / (np.abs(gram) @ w + rhs)).max())
