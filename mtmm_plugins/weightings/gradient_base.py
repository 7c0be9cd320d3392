"""What every gradient-level weighting shares: the mode, the ``combine`` contract, absent tasks
and non-finite gradients handled once, and the Gramian-based family.

A gradient-level weighting sees the per-task gradients ``grads [T, P]`` (each task's
loss differentiated with respect to the shared representation, or the shared
parameters, flattened to ``P`` numbers) and returns one combined gradient ``[P]``.
:func:`mtmm_core.weighting.weighted_backward` computes the gradients and applies the result.
"""

from __future__ import annotations

import numpy as np
import torch

from mtmm_core.errors import NonFiniteError
from mtmm_plugins.weightings.base import LossWeighting
from mtmm_plugins.weightings.solvers import gramian

GRADIENT_MODES = ("representation", "parameters")


class GradientWeighting(LossWeighting):
    """Base of the gradient-level weightings: ``combine(grads [T, P], losses [T], present [T]) -> [P]``.

    ``combine`` checks the shapes, drops the absent tasks (``present`` False), refuses a
    NaN or infinite loss or gradient of a present task (naming it) before any state
    changes (a :class:`GramianWeighting` reads that off the Gramian's diagonal, at no
    extra pass over the gradients), and hands the rest to :meth:`aggregate`, which subclasses implement on the
    ``t`` present tasks only. ``self.active`` ``[t]`` holds the present tasks' indices
    during the call.

    ``gradient_mode``: "representation" (gradients with respect to the fused features
    ``[B, D]``: one cheap backward per task through the heads) or "parameters" (with
    respect to the shared parameters). ``forward(losses)`` returns the plain sum of the
    present tasks' losses, the value to log and to validate with; training goes through
    ``combine``. ``weights()`` gives the last combination's weight per task (0 for an absent
    task; ones for the strategies that are not a weighting of the original gradients).
    """

    gradient_level = True
    #: True where ``aggregate`` refuses non-finite gradients itself, before any state changes,
    #: from numbers it computes anyway (the Gramian's diagonal, the norms), sparing a pass over ``[T, P]``.
    checks_own_gradients = False

    def __init__(self, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks)
        if gradient_mode not in GRADIENT_MODES:
            raise ValueError(f"gradient_mode must be one of {', '.join(GRADIENT_MODES)}, got {gradient_mode!r}")
        self.gradient_mode = gradient_mode
        self.register_buffer("task_weights", torch.ones(len(self.tasks)), persistent=False)
        self.active = torch.arange(len(self.tasks))

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        return losses.where(self.present_mask(losses, present), 0.0).sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()

    def check_grads(self, grads: torch.Tensor, losses: torch.Tensor) -> None:
        """Raise ValueError unless ``grads`` is ``[T, P]`` and ``losses`` is ``[T]``."""
        self.check_losses(losses)
        if grads.dim() != 2 or grads.shape[0] != len(self.tasks):
            raise ValueError(f"{self.method} expects task gradients of shape [T={len(self.tasks)}, P], "
                             f"got {list(grads.shape)}")

    def combine(self, grads: torch.Tensor, losses: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """The combined gradient ``[P]`` from task gradients ``[T, P]``, losses ``[T]`` and ``present`` ``[T]``."""
        self.check_grads(grads, losses)
        mask = self.present_mask(losses, present)
        self.check_finite(losses.detach(), "loss", mask)
        if not self.checks_own_gradients:  # a NaN or inf anywhere in a row makes its sum NaN or inf
            self.check_finite(grads.sum(dim=1), "gradient", mask)
        self.active = mask.cpu().nonzero().squeeze(1)
        self.task_weights.zero_()
        if self.active.numel() == 0:
            return torch.zeros_like(grads[0])
        if self.active.numel() == len(self.tasks):
            return self.aggregate(grads, losses.detach())
        return self.aggregate(grads[self.active.to(grads.device)], losses.detach()[self.active.to(losses.device)])

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """The combined gradient ``[P]`` from the present tasks' gradients ``[t, P]`` and losses ``[t]``."""
        raise NotImplementedError(f"{self.method} must implement aggregate(grads, losses) or combine()")

    def weighted_sum(self, alpha: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``sum_i alpha_i grads_i`` ``[P]`` over the present tasks; records ``alpha`` ``[t]`` for ``weights()``."""
        alpha = torch.as_tensor(alpha)
        if alpha.shape[0] == len(self.tasks):
            self.task_weights.copy_(alpha.detach().to(self.task_weights))
        else:
            self.task_weights.zero_()
            self.task_weights[self.active.to(self.task_weights.device)] = alpha.detach().to(self.task_weights)
        return alpha.to(device=grads.device, dtype=grads.dtype) @ grads


class GramianWeighting(GradientWeighting):
    """A gradient-level method whose weights depend on the gradients only through ``G = J J^T``.

    Subclasses implement :meth:`weights_from_gramian`; the combined gradient is
    ``sum_i w_i g_i``. The Gramian is formed once (``t^2 P`` multiply-adds) and the weights
    are solved for in float64 on the ``t x t`` matrix.
    """

    checks_own_gradients = True  # a NaN or inf anywhere in g_i makes G_ii NaN or inf
    gradient_length = 1  #: ``P`` of the gradients in the current call (their rounding grows with it)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        gram = gramian(grads)
        bad = [self.tasks[int(i)] for i in self.active[~np.isfinite(np.diag(gram))]]
        if bad:
            raise NonFiniteError(f"{self.method}: the gradient of task {', '.join(map(repr, bad))} is NaN or "
                                 "infinite (or its square overflows); nothing was updated")
        self.gradient_length = grads.shape[1]  # P, for the rank cut-off (solvers.rank_tolerance)
        weights = self.weights_from_gramian(gram, grads.dtype)
        return self.weighted_sum(torch.from_numpy(np.asarray(weights, dtype=np.float64)), grads)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        """Weights ``[t]`` from the present tasks' Gramian ``[t, t]`` (float64); ``dtype`` is the gradients'
        and ``self.gradient_length`` their number of entries ``P``."""
        raise NotImplementedError
