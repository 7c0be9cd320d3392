"""DualProj: the mean gradient projected onto the dual cone of the task gradients (Quinton and
Rey, "Jacobian Descent for Multi-Objective Optimization", 2024)."""

from __future__ import annotations

import numpy as np
import torch

from mtmm_plugins.weightings.upgrad import PreferenceGramianWeighting, dual_cone_weights, present_preferences


class DualProjection(PreferenceGramianWeighting):
    """DualProj: the (preference-weighted) mean gradient projected onto the dual cone of all tasks.

    With ``J`` ``[t, P]`` the present tasks' gradients (rows ``g_i``), ``G = J J^T`` ``[t, t]``
    and ``p`` ``[t]`` the preferences (``1/t`` each by default): the update is the projection of
    ``J^T p`` onto ``{x : J x >= 0}``,

        ``A(J) = J^T w``, ``w = argmin_{v >= p} v^T G v`` ``[t]`` (``weights()``)

    (Quinton and Rey 2024, Proposition 1; the same projection as GEM's eq. 11). Solved exactly
    on the Gramian in float64 (:func:`~mtmm_plugins.weightings.upgrad.dual_cone_weights`),
    whatever the ratio of the gradients' norms. The update has a non-negative dot product
    with every ``g_i``; when the mean already conflicts with no task it is the mean.

    ``preferences`` (optional, list in task order or dict task -> value, finite and >= 0):
    ``p`` itself, used as given (not normalised; an absent task's value is simply left out).
    A zero gradient is left out (weight 0).

    Compared with ``torchjd.aggregation.DualProj`` (TorchJD 0.18): the same update and default
    (``pref_vector`` ``1/m``; factor 1). TorchJD solves on ``G / trace(G) + 1e-4 I`` (plain
    mean, no projection, when ``trace(G) < 1e-4``); here on ``G`` itself, so the answers differ
    by that regularisation, not by a constant factor.
    """

    method = "dualproj"  # the registered name, for messages

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        preferences = present_preferences(self.preferences, self.active, gram.shape[0])
        return dual_cone_weights(gram, preferences[None, :], dtype, self.gradient_length)[0]
