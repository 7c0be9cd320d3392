"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022).

Also home of :func:`bargaining_weights`, the solver of ``G w = w^(-p)`` on the Gramian that
Nash-MTL (``p = 1``) and FairGrad (``p = 1 / alpha``, :mod:`.fairgrad`) share, with the
degenerate case (a zero gradient, or gradients that cancel) made well-defined.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting
from mtmm_plugins.weightings.solvers import min_norm_weights, nonzero_gradients, power_balance_weights



def gramian_eps(dtype: torch.dtype) -> float:
    """Relative rounding of a Gramian of ``dtype`` gradients: float32's for half types (summed in float32)."""
    return float(torch.finfo(torch.promote_types(dtype, torch.float32)).eps)


def _span_basis(rows: np.ndarray, limit: float) -> np.ndarray:
    """Orthonormal columns ``[r, k]`` spanning ``rows`` ``[n, r]`` (unit-scale vectors); singular values at or
    below ``sqrt(limit)`` times the largest are rounding, not directions."""
    if rows.shape[0] == 0:
        return np.zeros((rows.shape[1], 0))
    _, singular, right = np.linalg.svd(rows, full_matrices=False)
    return right[singular > math.sqrt(limit) * max(float(singular.max(initial=0.0)), 0.0)].T


def deadlock_structure(gram: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deadlocked tasks (bool ``[t]``), the unit gradients as coordinates ``X`` ``[t, r]`` in an orthonormal
    basis of their span (rows of zero gradients 0), and an orthonormal basis ``Q`` ``[r, k]`` of the
    deadlocked gradients' span.

    A task is deadlocked when it is in some non-negative combination of the gradients that is
    zero: no update improves all of those tasks. Found face by face on unit gradients (so a
    gradient 1e4 times smaller than the others is judged as precisely): the min-norm point of
    the convex hull of the unit gradients is zero when its squared norm is at most
    ``limit = 8 t eps`` (``eps`` the Gramian's precision, :func:`gramian_eps`); its support (the
    weights above ``sqrt(limit)`` times the largest) is deadlocked; the other gradients are
    projected off the deadlocked ones' span (one whose projection keeps a squared norm at most
    ``limit`` lies in it: deadlocked too), renormalised, and the search repeats until the
    min-norm point is not zero. A zero gradient
    (:func:`~mtmm_plugins.weightings.solvers.nonzero_gradients`: ``|g_i| <= 1e-20 max_j |g_j|``) is
    deadlocked on its own; so are two exactly opposed ones. The coordinates come from the
    eigen-decomposition of the normalised Gramian ``D^-1 G D^-1`` (``D = diag |g_i|``), so the
    projections are explicit and stable rather than Schur complements of ``G``.
    """
    count = gram.shape[0]
    limit = 8 * count * gramian_eps(dtype)
    nonzero = nonzero_gradients(gram)
    stuck = ~nonzero
    if not nonzero.any():
        return stuck, np.zeros((count, 0)), np.zeros((0, 0))
    norms = np.sqrt(np.diag(gram)[nonzero])
    unit = gram[np.ix_(nonzero, nonzero)] / np.outer(norms, norms)
    if not stuck.any():
        alpha = min_norm_weights(unit)
        if float(alpha @ unit @ alpha) > limit:  # the usual case: nothing deadlocked
            return stuck, np.zeros((count, 0)), np.zeros((0, 0))
    values, vectors = np.linalg.eigh(unit)
    rounding = count * gramian_eps(dtype)  # solvers.normalised_gramian's cut-off, taken at P = 1
    keep = values > rounding * float(values.max())
    coordinates = np.zeros((count, int(keep.sum())))
    coordinates[nonzero] = vectors[:, keep] * np.sqrt(values[keep])
    basis = _span_basis(coordinates[stuck], rounding)
    while (~stuck).any():
        free = np.flatnonzero(~stuck)
        projected = coordinates[free] - (coordinates[free] @ basis) @ basis.T
        squares = (projected * projected).sum(axis=1)
        spanned = squares <= limit
        if not spanned.any():
            projected = projected / np.sqrt(squares)[:, None]
            alpha = min_norm_weights(projected @ projected.T)
            point = alpha @ projected
            if float(point @ point) > limit:
                break
            spanned = alpha > math.sqrt(limit) * float(alpha.max())  # smaller shares are within rounding
        stuck[free[spanned]] = True
        basis = _span_basis(coordinates[stuck], rounding)
    return stuck, coordinates, basis


def deadlocked_tasks(gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Bool ``[t]``: the deadlocked tasks of :func:`deadlock_structure`."""
    return deadlock_structure(gram, dtype)[0]


def bargaining_weights(gram: np.ndarray, power: float, dtype: torch.dtype) -> np.ndarray:
    """Weights ``w`` ``[t]`` (float64) with ``G w = w^(-power)``, ``w > 0``, from the Gramian ``[t, t]``.

    This is the first-order condition of ``max_d sum_i U(g_i . d)`` over ``|d| <= r``, ``d = J^T w``,
    with ``U' (x) = x^(-1/power)`` (Nash-MTL: ``U = log``, ``power = 1``).

    **Deadlock.** When some tasks' gradients cancel in a non-negative combination
    (:func:`deadlocked_tasks`: a zero gradient, opposed gradients), no ``d`` improves all of them
    and the equation has no solution: ``w`` on those tasks grows without bound. The answer
    returned is the limit of ``d`` for any ``w`` whose residual tends to 0: ``d`` is orthogonal to
    every deadlocked gradient and solves the same equation for the other tasks with their
    gradients projected off the deadlocked ones' span. As weights of the original gradients:
    ``w_R`` from the projected gradients' Gramian, and on the deadlocked tasks the least-norm
    weights (of their unit gradients) that cancel the part of ``sum_R w_j g_j`` in their span
    (0 for a zero gradient; the whole of ``w`` is 0 when every task is deadlocked).

    A near-deadlock below the Gramian's precision counts as one: 0 within ``sqrt(8 t eps)`` of the
    convex hull of the unit gradients, about 3e-3 for float32 gradients at ``t = 10`` (1e-7 in
    float64). Just outside, the equation is solved as it stands, and its large weights amplify
    whatever separates the gradients from cancelling (the method's nature, not rounding).
    """
    gram = np.asarray(gram, dtype=np.float64)
    gram = (gram + gram.T) / 2
    count = gram.shape[0]
    stuck, coordinates, basis = deadlock_structure(gram, dtype)
    free = ~stuck
    weights = np.zeros(count)
    if not free.any():
        return weights
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    rows = np.flatnonzero(stuck & nonzero_gradients(gram))  # the deadlocked tasks with a direction
    if rows.size == 0:  # nothing deadlocked but zero gradients: solved without them
        weights[free] = power_balance_weights(gram[np.ix_(free, free)], power)
        return weights
    inside = (coordinates[free] @ basis) @ basis.T  # the free unit gradients' parts in the deadlocked span
    outside = norms[free][:, None] * (coordinates[free] - inside)  # the free gradients projected off it
    weights[free] = power_balance_weights(outside @ outside.T, power)
    # the deadlocked gradients cancel the part of sum_R w_j g_j in their span: least squares on unit rows
    part = (weights[free] * norms[free]) @ inside
    rounding = count * gramian_eps(dtype)  # the cut-off deadlock_structure's span basis uses
    unit_weights = np.linalg.lstsq(coordinates[rows].T, -part, rcond=math.sqrt(rounding))[0]
    weights[rows] = unit_weights / norms[rows]
    return weights


def clip_weights(weights: np.ndarray, gram: np.ndarray, max_norm: float) -> np.ndarray:
    """``weights`` scaled so that ``|sum_i w_i g_i| = sqrt(w^T G w) <= max_norm`` (``max_norm`` 0: unchanged)."""
    if max_norm > 0:
        norm = math.sqrt(max(float(weights @ gram @ weights), 0.0))
        if norm > max_norm:
            return weights * (max_norm / norm)
    return weights


def check_max_norm(max_norm: float) -> float:
    """``max_norm`` as a float; ValueError unless it is finite and >= 0."""
    number = isinstance(max_norm, (int, float)) and not isinstance(max_norm, bool)
    if not (number and math.isfinite(max_norm) and max_norm >= 0):
        raise ValueError(f"max_norm must be a finite number >= 0 (0 turns the clipping off), got {max_norm!r}")
    return float(max_norm)


class NashBargaining(GramianWeighting):
    """Nash-MTL: the Nash bargaining solution among the tasks (Navon et al., ICML 2022).

    The update ``d = sum_i alpha_i g_i`` maximises ``sum_i log(g_i . d)`` in a ball; its weights
    ``alpha`` ``[T]`` are the positive solution of

        ``G alpha = 1 / alpha``  (elementwise; ``G = J J^T`` ``[t, t]`` over the present tasks)

    so ``g_i . d = 1 / alpha_i`` and ``|d|^2 = alpha^T G alpha = t``: the update has norm ``sqrt(t)``
    whatever the gradients' scale (no task deadlocked, see below), and each task's share
    ``alpha_i g_i`` does not depend on its gradient's norm. Solved exactly on the Gramian in float64 (:func:`bargaining_weights`);
    ``combine(grads [T, P], losses [T], present [T]) -> [P]``, ``weights()`` gives ``alpha`` ``[T]``
    (0 for absent tasks).

    - ``max_norm`` (default 0: off): the paper's clipping. When ``|d| > max_norm``, ``alpha`` (and
      so ``d``) is scaled by ``max_norm / |d|``. It applies to the combined gradient that
      ``combine`` returns: in "representation" mode the representation's gradient, not the
      parameters' gradient the official code clips.
    - ``update_every`` (default 1): solve for ``alpha`` on every ``update_every``-th call and reuse
      the last ``alpha`` on the calls between, as long as the same tasks are present (a
      change of the present tasks solves again). The clipping uses the current gradients.
    - A zero gradient, or gradients that cancel (e.g. two opposed ones), make the equation
      unsolvable; those tasks are *deadlocked* and the update is taken orthogonal to their
      gradients, bargaining among the others (see :func:`bargaining_weights`). A zero
      gradient thus gets weight 0 and the others are solved as if it were absent.

    Compared with TorchJD's ``NashMTL`` and LibMTL's ``Nash_MTL`` (both from the official code):
    those solve approximately, up to 20 convex-concave iterations with cvxpy/ECOS warm-started
    from the previous ``alpha`` and stopping at ``|G alpha - 1 / alpha| < 1e-3`` measured on
    ``G / |G|_F``; at convergence their ``alpha`` equals ours (factor 1). Their ``max_norm``
    defaults to 1.0 (here 0, off). LibMTL's does not accept representation gradients.
    The state (step count, last ``alpha``, the tasks it was solved for) is kept in buffers.
    """

    method = "nash_mtl"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation",
                 max_norm: float = 0.0, update_every: int = 1):
        super().__init__(tasks, gradient_mode)
        self.max_norm = check_max_norm(max_norm)
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be an integer >= 1 (1: solve on every step), got {update_every!r}")
        self.update_every = update_every
        count = len(self.tasks)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("solved_weights", torch.zeros(count, dtype=torch.float64))
        self.register_buffer("solved_for", torch.zeros(count, dtype=torch.bool))

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        active = self.active.cpu()
        present = torch.zeros(len(self.tasks), dtype=torch.bool)
        present[active] = True
        reuse = (int(self.steps) % self.update_every != 0
                 and bool(torch.equal(self.solved_for.cpu(), present)))
        if reuse:
            weights = self.solved_weights.cpu()[active].numpy()
        else:
            weights = bargaining_weights(gram, 1.0, dtype)
            solved = torch.zeros(len(self.tasks), dtype=torch.float64)
            solved[active] = torch.from_numpy(weights)
            self.solved_weights.copy_(solved)
            self.solved_for.copy_(present)
        self.steps += 1
        return clip_weights(weights, gram, self.max_norm)
