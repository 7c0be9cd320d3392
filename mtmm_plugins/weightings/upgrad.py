"""UPGrad: the unconflicting projection of gradients (Quinton and Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024), and the dual-cone projection it shares with DualProj."""

from __future__ import annotations

import math

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting
from mtmm_plugins.weightings.solvers import nonnegative_qp, normalised_gramian


def preference_vector(preferences: list[float] | dict[str, float] | None, tasks: list[str],
                      method: str) -> np.ndarray | None:
    """``preferences`` as a float64 ``[T]`` in task order (None stays None: the method's default).

    A list gives one value per task in task order; a dict maps every task name to its value.
    Every value must be finite and >= 0, and at least one > 0.
    """
    if preferences is None:
        return None
    if isinstance(preferences, dict):
        unknown = [name for name in preferences if name not in tasks]
        missing = [name for name in tasks if name not in preferences]
        if unknown or missing:
            raise ValueError(f"{method} preferences must give one value per task ({', '.join(tasks)}); "
                             + (f"unknown: {', '.join(map(str, unknown))}" if unknown else "")
                             + ("; " if unknown and missing else "")
                             + (f"missing: {', '.join(missing)}" if missing else ""))
        values = [preferences[name] for name in tasks]
    elif isinstance(preferences, (list, tuple)):
        if len(preferences) != len(tasks):
            raise ValueError(f"{method} preferences has {len(preferences)} entries but there are "
                             f"{len(tasks)} tasks ({', '.join(tasks)}); give one value per task")
        values = list(preferences)
    else:
        raise ValueError(f"{method} preferences must be a list (one value per task) or a dict "
                         f"task -> value, got {preferences!r}")
    try:
        values = [float(value) for value in values]
    except (TypeError, ValueError):
        raise ValueError(f"{method} preferences must be numbers, got {preferences!r}") from None
    for task, value in zip(tasks, values):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{method} preference of task {task!r} must be finite and >= 0, got {value}")
    if not any(value > 0 for value in values):
        raise ValueError(f"{method} preferences must have at least one value > 0, got {values}")
    return np.asarray(values, dtype=np.float64)


def present_preferences(preferences: np.ndarray | None, active: torch.Tensor, count: int) -> np.ndarray:
    """The present tasks' preferences ``[t]``: the given ones as they are, else ``1/t`` each."""
    if preferences is None:
        return np.full(count, 1.0 / count)
    return preferences[active.cpu().numpy()]


def dual_cone_weights(gram: np.ndarray, targets: np.ndarray, dtype: torch.dtype = torch.float64,
                      length: int = 1) -> np.ndarray:
    """``V`` ``[m, t]``: row ``k`` is ``argmin_{v >= u_k} v^T G v`` for row ``u_k`` of ``targets`` ``[m, t]``.

    ``J^T v`` is then the projection of ``J^T u`` onto the dual cone ``{x : J x >= 0}`` of the
    gradients' rows ``J`` ``[t, P]`` (Quinton and Rey 2024, Proposition 1), from ``G = J J^T``
    ``[t, t]`` (float64). Solved exactly by :func:`nonnegative_qp` (``v = u + x``, ``x >= 0``)
    on the normalised Gramian ``C = D^-1 G D^-1`` (``D = diag |g_i|``) with ``D u`` scaled to a
    unit maximum: the problem is the same (``v^T G v = (D v)^T C (D v)``, ``v >= u`` iff
    ``D v >= D u``), and the solver's tolerances then do not depend on how the gradients'
    norms differ. ``C`` keeps its genuine directions (:func:`normalised_gramian`: rounding of
    ``dtype`` gradients of ``length`` entries is not a direction, and a negative rounding eigenvalue would make the
    problem non-convex). A zero gradient constrains nothing and is left out with ``v_i = 0``.
    """
    gram = np.asarray(gram, dtype=np.float64)
    targets = np.atleast_2d(np.asarray(targets, dtype=np.float64))
    solution = np.zeros_like(targets)
    reduced = normalised_gramian(gram, dtype, length)
    if len(reduced.eigenvalues) == 0:
        return solution
    nonzero, norms = reduced.nonzero, reduced.norms
    cleaned = (reduced.basis * reduced.eigenvalues) @ reduced.basis.T
    for row, target in enumerate(targets):
        scaled = norms * target[nonzero]  # D u
        size = float(np.abs(scaled).max(initial=0.0))
        if size == 0:
            continue
        scaled = scaled / size
        lifted = scaled + nonnegative_qp(cleaned, cleaned @ scaled)  # D v / size
        solution[row, nonzero] = lifted * size / norms
    return solution


class PreferenceGramianWeighting(GramianWeighting):
    """A Gramian weighting that takes ``preferences`` over the tasks (UPGrad, DualProj, ConFIG):
    a list in task order or a dict by task name, stored as float64 ``[T]`` (None: the method's default)."""

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation",
                 preferences: list[float] | dict[str, float] | None = None):
        super().__init__(tasks, gradient_mode)
        self.preferences = preference_vector(preferences, self.tasks, self.method)


class UnconflictingProjection(PreferenceGramianWeighting):
    """UPGrad: every task gradient projected onto the dual cone of all of them, then averaged.

    With ``J`` ``[t, P]`` the present tasks' gradients (rows ``g_i``) and ``G = J J^T`` ``[t, t]``:
    the dual cone is ``{x : J x >= 0}`` (the directions that conflict with no task), the
    projection of ``g_i = J^T e_i`` onto it is ``J^T v_i`` with
    ``v_i = argmin_{v >= e_i} v^T G v`` (Quinton and Rey 2024, Proposition 1), and the update is

        ``A(J) = sum_i p_i J^T v_i = J^T w``, ``w = sum_i p_i v_i`` ``[t]`` (``weights()``),

    ``p = 1/t`` by default: the mean of the projections, as the paper defines UPGrad (``w``
    does not sum to 1; each ``v_i >= e_i``). Every ``v_i`` is found exactly on the Gramian in
    float64 (:func:`dual_cone_weights`), whatever the ratio of the gradients' norms. The
    update has a non-negative dot product with every ``g_i``.

    ``preferences`` (optional, list in task order or dict task -> value, finite and >= 0):
    ``p`` itself, used as given (not normalised; an absent task's value is simply left out).
    A zero gradient is left out (weight 0): it constrains nothing and projects to 0.

    Compared with ``torchjd.aggregation.UPGrad`` (TorchJD 0.18): the same update and the same
    default (``pref_vector`` ``1/m``, the sum of the projections of ``p_i g_i``, i.e. their mean;
    factor 1). TorchJD solves with quadprog on ``G / trace(G) + 1e-4 I`` and, when
    ``trace(G) < 1e-4``, on ``1e-4 I``, which returns the plain mean without any projection;
    here ``G`` is used as it is, so the answers differ by that regularisation (noticeably when
    the gradients are small or their norms differ by 1e3 or more), not by a constant factor.
    """

    method = "upgrad"  # the registered name, for messages

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        count = gram.shape[0]
        preferences = present_preferences(self.preferences, self.active, count)
        projections = dual_cone_weights(gram, np.eye(count), dtype, self.gradient_length)  # row i: v_i
        return preferences @ projections
