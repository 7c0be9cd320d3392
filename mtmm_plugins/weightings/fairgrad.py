"""FairGrad: fair resource allocation in multi-task learning (Ban and Ji, ICML 2024)."""

from __future__ import annotations

import math

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting
from mtmm_plugins.weightings.nash_mtl import bargaining_weights, check_max_norm, clip_weights


class FairGradient(GramianWeighting):
    """FairGrad: the update that maximises the tasks' alpha-fair utility of their improvements.

    The update ``d = sum_i w_i g_i`` maximises ``sum_i (g_i . d)^(1 - alpha) / (1 - alpha)`` (``log``
    for ``alpha = 1``) in a ball; its weights ``w`` ``[T]`` are the positive solution of

        ``G w = w^(-1 / alpha)``  (elementwise; ``G = J J^T`` ``[t, t]`` over the present tasks)

    so ``g_i . d = w_i^(-1/alpha)``. ``alpha = 1`` is proportional fairness, the same weights as
    Nash-MTL; ``alpha = 2`` minimum potential delay; large ``alpha`` tends to max-min fairness
    (equal improvements ``G w = 1``), small ``alpha`` to the plain sum. Solved exactly on the
    Gramian in float64 (:func:`~mtmm_plugins.weightings.nash_mtl.bargaining_weights`);
    ``combine(grads [T, P], losses [T], present [T]) -> [P]``, ``weights()`` gives ``w`` ``[T]``
    (0 for absent tasks).

    - ``alpha`` (default 1.0, as the official code; finite, > 0).
    - ``max_norm`` (default 0: off): when ``|d| > max_norm``, ``w`` (and so ``d``) is scaled by
      ``max_norm / |d|`` (the official code clips the shared parameters' gradient at 1.0).
    - A zero gradient, or gradients that cancel (e.g. two opposed ones), make the equation
      unsolvable; those tasks are deadlocked and the update is taken orthogonal to their
      gradients, the others sharing it by the same rule (a zero gradient gets weight 0 and the
      others are solved as if it were absent; see ``bargaining_weights``).

    Compared with TorchJD's ``FairGrad(alpha)`` and LibMTL's ``FairGrad`` (both from the official
    code): those solve the same equation approximately with ``scipy.optimize.least_squares``
    from ``w = 1/t`` (default tolerances), factor 1 at convergence; TorchJD has no default
    ``alpha`` and returns uniform weights ``1/t`` for ``alpha = 0`` (refused here); neither clips,
    while the official code clips at 1.0. LibMTL's does not accept representation gradients.
    """

    method = "fairgrad"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation",
                 alpha: float = 1.0, max_norm: float = 0.0):
        super().__init__(tasks, gradient_mode)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0 (1: proportional fairness, as Nash-MTL), "
                             f"got {alpha!r}")
        self.alpha = float(alpha)
        self.max_norm = check_max_norm(max_norm)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        weights = bargaining_weights(gram, 1.0 / self.alpha, dtype)
        return clip_weights(weights, gram, self.max_norm)
