"""GradVac: Gradient Vaccine (Wang et al., ICLR 2021)."""

from __future__ import annotations

import math

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting
from mtmm_plugins.weightings.solvers import nonzero_gradients


class GradientVaccine(GramianWeighting):
    """Each task gradient is turned towards every other until their cosine reaches an adaptive target.

    Per ordered pair of tasks ``(i, j)`` a target cosine ``phi_hat_ij`` (buffer ``target_cosines``
    ``[T, T]``, float64, starting at 0) follows an exponential moving average. Each step, for
    each present task ``i``, ``g_i' = g_i``, and for the other present tasks ``j`` in a random order:

        ``phi = cos(g_i', g_j)``;
        if ``phi < phi_hat_ij``:
        ``g_i' += |g_i'| (phi_hat_ij sqrt(1 - phi^2) - phi sqrt(1 - phi_hat_ij^2))
        / (|g_j| sqrt(1 - phi_hat_ij^2)) g_j``
        (afterwards ``cos(g_i', g_j) = phi_hat_ij``);
        then ``phi_hat_ij = (1 - beta) phi_hat_ij + beta phi``.

    The combined gradient is ``sum_i g_i'``. The EMA takes ``phi`` as measured before pair
    ``(i, j)``'s correction, with ``g_i'`` already corrected towards the tasks visited before
    ``j`` (the paper's Algorithm 1, TorchJD, and LibMTL since its 2024 fix; LibMTL before it
    updated the EMA only when a correction was made). ``g_j`` is always the original gradient.

    Computed on the Gramian ``G`` ``[t, t]`` in float64: ``g_i' = sum_k C_ik g_k`` with ``C`` ``[t, t]``
    (starting at the identity), so ``g_i' . g_j = (C G)_ij``, ``|g_i'|^2 = (C G C^T)_ii``, a correction
    adds to ``C_ij``, and the combined gradient is ``sum_k (sum_i C_ik) g_k``: ``weights()`` is
    ``C.sum(0)`` ``[T]``. The order of the others is ``torch.randperm(t - 1)`` over them (ascending
    task index), drawn for each present task in task order from torch's global generator (the
    draws TorchJD's ``GradVac`` makes: with the same seed and tasks the orders agree).

    - ``beta`` (default 0.5, as TorchJD and LibMTL; in [0, 1]). ``beta = 0`` keeps every target at
      0, which is PCGrad's projection; ``beta = 1`` makes the target the last measured cosine.
    - Absent tasks take no part: their rows and columns of ``phi_hat`` are neither read nor
      updated, and their weight is 0.
    - A zero gradient (``|g_i| <= 1e-20 max_j |g_j|``) has no direction: a pair where ``g_i`` or
      ``g_j`` is zero is skipped (no correction, no EMA update). A target of exactly 1 cannot be
      reached by a finite correction; such a pair is only measured. ``phi`` is clamped to
      ``[-1, 1]``.

    Compared with TorchJD's ``GradVac(beta=0.5, eps=1e-8)`` and LibMTL's ``GradVac``: they add
    ``eps = 1e-8`` to the denominators of ``phi`` (``|g_i'| |g_j| + eps``) and of the correction, so
    their ``phi`` is ours times ``|g_i'||g_j| / (|g_i'||g_j| + 1e-8)``, which matters for small
    gradients (norms near 1e-4 and below), and a zero ``g_j`` gets a correction of order
    ``1e8 |g_i'|`` on a zero vector (a huge weight, no effect) and updates the EMA with ``phi = 0``.
    LibMTL draws the order with Python's ``random.shuffle``, computes in the gradients' dtype,
    can keep one target per layer or matrix (``GradVac_group_type``; here one per pair, its
    ``whole_model``), and does not accept representation gradients.
    """

    method = "gradvac"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation", beta: float = 0.5):
        super().__init__(tasks, gradient_mode)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0.0 <= beta <= 1.0):
            raise ValueError(f"beta must be a number in [0, 1] (the EMA rate of the target cosines), got {beta!r}")
        self.beta = float(beta)
        count = len(self.tasks)
        self.register_buffer("target_cosines", torch.zeros(count, count, dtype=torch.float64))

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        gram = np.asarray(gram, dtype=np.float64)
        active = self.active.cpu()
        count = active.numel()
        rows = active.unsqueeze(1), active.unsqueeze(0)
        targets = self.target_cosines.detach().cpu()[rows].numpy().copy()  # [t, t]
        norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        nonzero = nonzero_gradients(gram)
        coefficients = np.eye(count)
        for i in range(count):
            others = [j for j in range(count) if j != i]
            order = [others[k] for k in torch.randperm(count - 1).tolist()]
            row = coefficients[i]
            for j in order:
                dots = row @ gram  # g_i' . g_k for every k
                norm_i = math.sqrt(max(float(dots @ row), 0.0))
                if not (nonzero[i] and nonzero[j]) or norm_i == 0.0:
                    continue
                phi = min(max(float(dots[j]) / (norm_i * norms[j]), -1.0), 1.0)
                target = float(targets[i, j])
                if phi < target < 1.0:
                    spread = math.sqrt(1.0 - target * target)
                    row[j] += norm_i * (target * math.sqrt(1.0 - phi * phi) - phi * spread) / (norms[j] * spread)
                targets[i, j] = (1.0 - self.beta) * target + self.beta * phi
        updated = self.target_cosines.detach().cpu().clone()
        updated[rows] = torch.from_numpy(targets)
        self.target_cosines.copy_(updated)
        return coefficients.sum(axis=0)
