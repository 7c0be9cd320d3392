"""IMTL: impartial multi-task learning, loss scales and gradient weights together (Liu et al., ICLR 2021)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mtmm_plugins.weightings.imtl import ImpartialGradientWeighting


class ImpartialMultitask(ImpartialGradientWeighting):
    """IMTL (hybrid): learned loss scales (IMTL-L) and impartial weights of the scaled gradients (IMTL-G).

    IMTL-L: each task's loss is scaled as ``e^{s_i} L_i - s_i`` with ``s`` ``[T]`` learned
    (``nn.Parameter``, starting at ``init``); ``d/ds_i = e^{s_i} L_i - 1``, zero where
    ``e^{s_i} L_i = 1``, so the scaled losses are driven towards 1. ``combine`` writes that
    derivative into ``s.grad`` (accumulating, like any backward) for the present tasks and 0
    for the absent ones; the model's optimizer steps ``s``.

    IMTL-G on the scaled losses' gradients ``h_i = e^{s_i} g_i`` (``g_i`` ``[P]`` the task
    gradients): weights ``alpha`` ``[t]`` summing to 1 such that ``h = sum_i alpha_i h_i``
    projects equally onto every unit gradient ``u_i = g_i / |g_i|`` (Liu et al. 2021, eq. 5-7),
    from :class:`ImpartialGradientWeighting`'s ``weights_from_gramian`` applied to the scaled
    Gramian ``E G E`` (``E = diag e^{s_i}``, float64; a zero gradient is left out with weight 0).
    The combined gradient is ``sum_i (alpha_i e^{s_i}) g_i`` ``[P]``; ``weights()`` reports
    ``alpha_i e^{s_i}``, the weights of the *unscaled* gradients (0 for an absent task).
    The direction does not depend on ``s`` (equal projections fix it); ``s`` sets how much
    each task's gradient magnitude counts in the step's length through ``sum alpha = 1``.

    ``forward(losses, present)`` = ``sum_{i present} e^{s_i} L_i - s_i`` ``[]`` with ``s``
    detached: the value to log and validate with (training goes through ``combine``).

    Compared with LibMTL's ``IMTL`` (factors per task): LibMTL returns ``alpha``, the weights
    of the scaled gradients; ``weights()`` here is ``alpha_i e^{s_i}`` (factor ``e^{s_i}``).
    LibMTL backpropagates the scaled losses, so the task-specific heads receive
    ``e^{s_i} grad L_i``; through :func:`mtmm_core.weighting.weighted_backward` the heads
    receive the plain ``grad L_i`` (factor ``e^{-s_i}`` relative to LibMTL and the paper's
    hybrid algorithm), and only the shared part gets IMTL's combination. With representation
    gradients LibMTL sums the per-sample gradients over the batch (``[T, D]``) before solving for
    ``alpha``; here the Gramian is that of the flattened ``[T, B * D]`` gradients, as for
    ``ImpartialGradientWeighting``. LibMTL inverts ``D U^T`` (``torch.inverse``), which fails on
    a zero or dependent gradient; the solver here uses a pseudo-inverse and leaves zero gradients
    out. ``s.grad`` is the same (``e^{s} L - 1``). TorchJD has IMTL-G (``IMTLG``) but not IMTL-L.
    """

    method = "imtl"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation", init: float = 0.0):
        super().__init__(tasks=tasks, gradient_mode=gradient_mode)
        init = float(init)
        if not math.isfinite(init):
            raise ValueError(f"imtl init (the starting log loss scale s) must be finite, got {init}")
        self.loss_scales = nn.Parameter(torch.full((len(self.tasks),), init))

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        s = self.loss_scales.detach().to(device=losses.device, dtype=losses.dtype)
        terms = torch.exp(s) * losses - s
        return terms.where(self.present_mask(losses, present), 0.0).sum()

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        """``alpha_i e^{s_i}`` ``[t]``: IMTL-G's weights of the scaled gradients, times the scales."""
        active = self.active.to(self.loss_scales.device)
        scales = torch.exp(self.loss_scales.detach()[active].double()).cpu().numpy()
        alpha = super().weights_from_gramian(gram * np.outer(scales, scales), dtype)
        return alpha * scales

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        combined = super().aggregate(grads, losses)
        s = self.loss_scales
        active = self.active.to(s.device)
        grad_s = torch.zeros_like(s)
        grad_s[active] = torch.exp(s.detach()[active]) * losses.to(device=s.device, dtype=s.dtype) - 1.0
        s.grad = grad_s if s.grad is None else s.grad + grad_s
        return combined
