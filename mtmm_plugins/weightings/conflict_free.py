"""ConFIG: conflict-free gradients (Liu et al., "ConFIG: Towards Conflict-free Training of Physics
Informed Neural Networks", ICLR 2025)."""

from __future__ import annotations

import numpy as np
import torch

from mtmm_plugins.weightings.solvers import unit_pseudo_solve
from mtmm_plugins.weightings.upgrad import PreferenceGramianWeighting, present_preferences


def conflict_free_weights(gram: np.ndarray, preferences: np.ndarray,
                          dtype: torch.dtype = torch.float64, length: int = 1) -> np.ndarray:
    """ConFIG's weights ``w`` ``[t]`` on the gradients (update ``J^T w``) from ``G = J J^T`` ``[t, t]`` (float64).

    With ``u_i = g_i / |g_i|`` the rows of ``U`` ``[t, P]``, ``D = diag |g_i|`` and the normalised
    Gramian ``C = U U^T = D^-1 G D^-1``: ``pinv(U) p = U^T C^+ p``, so the unit direction is
    ``g_u = J^T c / |J^T c|`` with ``c = D^-1 C^+ p``, and the update
    ``(sum_i g_i . g_u) g_u = J^T w`` with ``w = c (1^T G c) / (c^T G c)``. ``C^+`` keeps the
    genuine directions (:func:`~mtmm_plugins.weightings.solvers.unit_pseudo_solve`: rounding of
    ``dtype`` gradients of ``length`` entries is not a direction). A zero gradient is left out of ``U`` (weight 0). All zero, or ``C^+ p = 0``
    (e.g. two exactly opposite gradients), gives ``w = 0``.
    """
    gram = np.asarray(gram, dtype=np.float64)
    weights = np.zeros(gram.shape[0])
    direction = unit_pseudo_solve(gram, preferences, dtype, length)  # c = D^-1 C^+ p
    projections = gram @ direction  # g_i . (J^T c)
    squared_length = float(direction @ projections)  # |J^T c|^2
    if not (np.isfinite(squared_length) and squared_length > 0):
        return weights
    return direction * (float(projections.sum()) / squared_length)


class ConflictFreeGradient(PreferenceGramianWeighting):
    """ConFIG: the direction with equal cosine to every task gradient, as long as their projections.

    With ``J`` ``[t, P]`` the present tasks' gradients (rows ``g_i``), unit gradients
    ``u_i = g_i / |g_i|`` (rows of ``U`` ``[t, P]``) and preferences ``p`` ``[t]`` (ones by default):

        ``g_u = U(pinv(U) p)``, ``U(x) = x / |x|``; ``g_ConFIG = (sum_i g_i . g_u) g_u`` ``[P]``

    (Liu et al. 2025, eq. 2 with ``p = 1``): ``u_i . g_u`` is proportional to ``p_i`` (equal
    cosines by default) when the unit gradients are independent; otherwise ``pinv`` gives the
    least-squares direction. The length is the sum of the gradients' projections onto
    ``g_u``. Computed through the normalised Gramian ``U U^T = D^-1 G D^-1`` in float64
    (:func:`conflict_free_weights`) and returned as weights on the original gradients,
    ``g_ConFIG = J^T w`` (``weights()``). The direction is IMTL-G's (``alpha ~ D^-1 C^+ 1``);
    only the length differs. A zero gradient is left out of ``U`` (weight 0), not NaN.

    ``preferences`` (optional, list in task order or dict task -> value, finite and >= 0):
    the target ratios of the cosines; only their ratios matter.

    Compared with ``torchjd.aggregation.ConFIG`` (TorchJD 0.18): the same update and default
    (``pref_vector`` ones, the sum of the projections as the length; factor 1). TorchJD takes
    ``torch.linalg.pinv`` of the unit gradients ``[m, n]`` in their dtype (singular values below
    ``max(m, n) eps`` of the largest dropped); here the rank is judged on the normalised
    Gramian at ``t eps sqrt(P)`` of its largest eigenvalue (:func:`~mtmm_plugins.weightings.solvers.normalised_gramian`),
    so the two differ only when the unit gradients are nearly dependent.
    """

    method = "config"  # the registered name, for messages

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        count = gram.shape[0]
        preferences = np.ones(count) if self.preferences is None else present_preferences(
            self.preferences, self.active, count)
        return conflict_free_weights(gram, preferences, dtype, self.gradient_length)
