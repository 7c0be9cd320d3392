"""Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

import torch
from torch import nn

from mtmm_core.weighting_bases import LossWeighting

# Multiplier c of exp(-s) L in each task type's term c * exp(-s) * L + 0.5 * s, where s = log sigma^2:
#   regression:     L / (2 sigma^2) + log sigma = 0.5 * exp(-s) * L + 0.5 * s
#   classification: L / sigma^2     + log sigma = 1.0 * exp(-s) * L + 0.5 * s
LOSS_SCALE_BY_TYPE = {"regression": 0.5, "classification": 1.0}


class UncertaintyWeighting(LossWeighting):
    """Learned uncertainty weights: losses ``[T]`` to ``sum_i c_i * exp(-s_i) * L_i + 0.5 * s_i`` ``[]``.

    ``s_i = log sigma_i^2`` is learned per task, starting at ``init``. Without
    ``per_type`` every task uses ``c_i = 0.5``: ``0.5 * exp(-s_i) * L_i + 0.5 * s_i``.
    ``per_type`` maps tasks to ``"regression"`` (``c = 0.5``, i.e. ``L / (2 sigma^2) + log sigma``)
    or ``"classification"`` (``c = 1``, i.e. ``L / sigma^2 + log sigma``); tasks left out
    are regression. ``weights()`` gives the multipliers ``c_i * exp(-s_i)``. An absent task's
    whole term is left out, so its ``s_i`` gets no gradient (the ``0.5 s_i`` term alone
    would drive it down on every step the task had no label).
    """

    method = "uncertainty"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], per_type: dict[str, str] | None = None, init: float = 0.0):
        super().__init__(tasks)
        per_type = per_type or {}
        unknown = [name for name in per_type if name not in self.tasks]
        if unknown:
            raise ValueError(
                f"uncertainty per_type names unknown tasks {', '.join(map(str, unknown))}; "
                f"tasks: {', '.join(self.tasks)}"
            )
        bad_types = {task: kind for task, kind in per_type.items() if kind not in LOSS_SCALE_BY_TYPE}
        if bad_types:
            raise ValueError(
                f"uncertainty per_type values must be one of {', '.join(LOSS_SCALE_BY_TYPE)}; got {bad_types}"
            )
        scales = [LOSS_SCALE_BY_TYPE[per_type.get(task, "regression")] for task in self.tasks]
        self.register_buffer("loss_scales", torch.tensor(scales))
        self.log_variances = nn.Parameter(torch.full((len(self.tasks),), float(init)))

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        s = self.log_variances.to(losses.dtype)
        terms = self.loss_scales.to(losses.dtype) * torch.exp(-s) * losses + 0.5 * s
        return terms.where(self.present_mask(losses, present), 0.0).sum()

    def weights(self) -> torch.Tensor:
        return (self.loss_scales * torch.exp(-self.log_variances)).detach()
