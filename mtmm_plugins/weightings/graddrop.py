"""GradDrop: gradient sign dropout (Chen et al., "Just Pick a Sign", NeurIPS 2020)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from mtmm_core.weighting_bases import GradientWeighting


def per_task_values(value: float | list[float] | dict[str, float], tasks: list[str], name: str,
                    default: float) -> list[float]:
    """One float per task from a scalar, a list in task order, or a dict task -> value (others ``default``)."""
    if isinstance(value, dict):
        unknown = [task for task in value if task not in tasks]
        if unknown:
            raise ValueError(f"{name} names unknown tasks {', '.join(map(str, unknown))}; tasks: {', '.join(tasks)}")
        return [float(value.get(task, default)) for task in tasks]
    if isinstance(value, (list, tuple)):
        if len(value) != len(tasks):
            raise ValueError(f"{name} has {len(value)} entries but there are {len(tasks)} tasks "
                             f"({', '.join(tasks)}); give one per task")
        return [float(item) for item in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * len(tasks)
    raise ValueError(f"{name} must be a number, a list with one per task or a dict task -> value, got {value!r}")


class GradientSignDropout(GradientWeighting):
    """GradDrop: per coordinate, keep only the task-gradient components of one randomly chosen sign.

    With the present tasks' gradients ``g_i`` ``[t, P]``, per coordinate (Chen et al. 2020, eq. 1-2
    and Algorithm 1):

    - sign purity ``P = 1/2 (1 + sum_i g_i / sum_i |g_i|)`` ``[P]`` in ``[0, 1]`` (1: every
      component positive, 0: every one negative; 1/2 where every component is 0, which then
      keeps nothing, there being nothing to keep);
    - ``U ~ U(0, 1)`` ``[P]``, drawn with ``torch.rand`` from torch's global generator in the
      gradients' dtype (a seeded run repeats);
    - mask ``M_i = [f(P) > U] [g_i > 0] + [f(P) < U] [g_i < 0]``: where ``f(P) > U`` the positive
      components survive, where ``f(P) < U`` the negative ones;
    - combined ``sum_i (l_i + (1 - l_i) M_i) g_i`` ``[P]``, with leak ``l_i`` in ``[0, 1]``
      (``l_i = 1`` passes task ``i``'s gradient through untouched; default 0 everywhere).

    ``f`` is a monotonically increasing map of ``[0, 1]`` onto itself, odd around ``(1/2, 1/2)``;
    identity by default. It is applied to the purity ``[P]`` (in the gradients' dtype) and must return a tensor
    of the same shape. ``leak`` is one number for every task, a list in task order, or a dict
    task -> leak (tasks left out: 0).

    The result is not a weighting of the original gradients: ``weights()`` reports 1 for every
    present task (0 for an absent one). An absent task takes no part; ``U`` is drawn over the
    ``P`` coordinates whatever the number of tasks, so a step with some tasks absent equals
    the same seeded step on a model with only the present tasks.

    Where it acts: the paper inserts GradDrop as a layer on a shared activation, combining the
    task gradients there before the backward continues through the trunk. mtmm's default
    ``gradient_mode="representation"`` is that arrangement with the fused features as the
    activation: the combination is what reaches the encoders and the fusion.

    Compared with TorchJD's ``GradDrop(f, leak)`` aggregator (lines 10-15 of the paper's
    Algorithm 1): the same rule and the same draw (``torch.rand`` of shape ``[P]`` in the
    gradients' dtype), so under one seed the results agree (factor 1). Differences: the kept
    components are summed as ``(sum_i g_i +- sum_i |g_i|) / 2`` without a ``[T, P]`` mask (the
    sums can differ from TorchJD's in the last bits); an all-zero coordinate gets ``P = 1/2`` here and
    ``NaN`` there (both keep nothing); ``leak`` is a tensor per row there, a number / list / dict
    here. Compared with LibMTL's ``GradDrop`` (representation gradients only) and the
    authors' own layer: for a batch-separated activation ``A`` ``[B, D]`` they first form
    ``sum_b sign(A_b) g_{i,b}`` ``[D]``, compute the purity and the mask on that, and apply the
    mask to every sample's gradient; ``combine`` here receives the flattened ``[B * D]``
    gradients without ``A``, so the purity is taken per coordinate of the flattened gradient
    (per sample and feature), as TorchJD does. LibMTL also adds ``1e-7`` to the purity's
    denominator and takes one scalar leak.
    """

    method = "graddrop"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation",
                 leak: float | list[float] | dict[str, float] = 0.0,
                 f: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__(tasks, gradient_mode)
        values = per_task_values(leak, self.tasks, "graddrop leak", 0.0)
        for task, value in zip(self.tasks, values):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"graddrop leak of task {task!r} must be in [0, 1], got {value}")
        if f is not None and not callable(f):
            raise ValueError(f"graddrop f must be a callable mapping the purity [P] in [0, 1] to [0, 1], got {f!r}")
        self.f = f
        self.leaks = any(value > 0 for value in values)
        self.register_buffer("leak", torch.tensor(values), persistent=False)

    def keep_probability(self, purity: torch.Tensor) -> torch.Tensor:
        """``f(P)`` ``[P]``: the probability that the positive components survive at each coordinate."""
        if self.f is None:
            return purity
        value = self.f(purity)
        if not isinstance(value, torch.Tensor) or value.shape != purity.shape:
            raise ValueError(f"graddrop f must return a tensor of shape {list(purity.shape)}, got "
                             f"{getattr(value, 'shape', type(value).__name__)}")
        return value

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        # Per coordinate the kept components add up to (sum + |sum|_1) / 2 when the positive sign
        # wins and to (sum - |sum|_1) / 2 when the negative one does: no [t, P] mask is needed.
        total, mass = self._sums(grads, torch.ones(grads.shape[0], dtype=grads.dtype, device=grads.device))
        ratio = torch.where(mass > 0, total / mass.clamp_min(torch.finfo(mass.dtype).tiny), 0.0)
        keep = self.keep_probability(0.5 * (1.0 + ratio))
        uniform = torch.rand(keep.shape, dtype=grads.dtype, device=grads.device)
        self.task_weights[self.active.to(self.task_weights.device)] = 1.0
        if self.leaks:  # a leak l_i passes l_i g_i through; the mask acts on (1 - l_i) g_i
            leak = self.leak[self.active.to(self.leak.device)].to(device=grads.device, dtype=grads.dtype)
            total, mass = self._sums(grads, 1.0 - leak)
        kept = torch.where(keep > uniform, total + mass, torch.where(keep < uniform, total - mass, 0.0)) / 2
        if self.leaks:
            kept = kept + leak @ grads
        return kept

    @staticmethod
    def _sums(grads: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sum_i s_i g_i`` and ``sum_i s_i |g_i|`` ``[P]``, one row at a time (no ``[t, P]`` temporary)."""
        total = torch.zeros_like(grads[0])
        mass = torch.zeros_like(grads[0])
        for scale, row in zip(scales.tolist(), grads):
            total.add_(row, alpha=scale)
            mass.add_(row.abs(), alpha=scale)
        return total, mass
