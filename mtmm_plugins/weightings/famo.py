"""Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023)."""

import torch
from torch import nn

from mtmm_core.weighting_bases import LossWeighting, masked_softmax


class FastAdaptiveWeighting(LossWeighting):
    """FAMO: losses ``[T]`` to ``sum_i z_i log D_i / c`` with ``z = softmax(xi)``, ``D_i = L_i - min_i + eps``.

    ``c = sum_i z_i / D_i`` is a constant of the step, so the gradient on ``L_i`` is
    ``z_i / (c D_i)`` (these effective weights sum to 1; ``weights()`` reports them). The
    logits ``xi`` are not trained by the model's optimizer: after each optimizer step the
    trainer calls :meth:`after_step` with the losses of the same batch under the updated
    model, and ``xi`` takes one Adam step (``lr``, ``weight_decay``) on
    ``J_softmax^T (log D_before - log D_after)``. ``xi``, Adam's moments and the last
    ``log D`` are saved in checkpoints.

    Absent tasks: the softmax, ``c`` and the Adam step run over the present tasks only; an
    absent task's logit, moments and step count stay as they were.
    """

    method = "famo"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], lr: float = 0.025, weight_decay: float = 1e-3,
                 min_losses: list[float] | None = None, eps: float = 1e-8, betas: tuple[float, float] = (0.9, 0.999)):
        super().__init__(tasks)
        count = len(self.tasks)
        if min_losses is not None and len(min_losses) != count:
            raise ValueError(f"famo min_losses has {len(min_losses)} entries but there are {count} tasks")
        self.lr, self.weight_decay, self.eps, self.betas = float(lr), float(weight_decay), float(eps), tuple(betas)
        self.logits = nn.Parameter(torch.zeros(count), requires_grad=False)  # xi; updated by after_step only
        self.register_buffer("min_losses", torch.tensor(min_losses or [0.0] * count, dtype=torch.float32))
        self.register_buffer("log_losses_before", torch.zeros(count))
        self.register_buffer("adam_exp_avg", torch.zeros(count))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(count))
        self.register_buffer("adam_steps", torch.zeros(count, dtype=torch.long))  # per task: steps it took part in
        self.register_buffer("task_weights", torch.full((count,), 1.0 / count), persistent=False)

    def _log_gaps(self, losses: torch.Tensor) -> torch.Tensor:
        """``log D`` ``[T]`` with ``D_i = max(L_i - min_i, 0) + eps``."""
        return torch.log((losses - self.min_losses.to(losses.dtype)).clamp_min(0) + self.eps)

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        mask = self.present_mask(losses, present)
        z = masked_softmax(self.logits.detach(), mask).to(losses.dtype)
        log_gaps = self._log_gaps(losses).where(mask, 0.0)
        c = (z / log_gaps.exp()).sum().detach().clamp_min(torch.finfo(losses.dtype).tiny)
        with torch.no_grad():
            self.log_losses_before.copy_(log_gaps)
            self.task_weights.copy_(z / (c * log_gaps.exp()))
        return (z * log_gaps).sum() / c

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()

    @torch.no_grad()
    def after_step(self, losses_after: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """One Adam step on ``xi`` from the losses ``[T]`` of the same batch after the model's update.

        Raises :class:`mtmm_core.errors.NonFiniteError` naming the task, before any state
        changes, when a present task's loss is NaN or infinite.
        """
        self.check_losses(losses_after)
        mask = self.present_mask(self.logits, present)
        self.check_finite(losses_after.detach()[:, None], "loss after the step", mask)
        delta = (self.log_losses_before - self._log_gaps(losses_after.detach().float())).where(mask, 0.0)
        z = masked_softmax(self.logits, mask)
        grad = z * delta - z * (z * delta).sum()  # J_softmax^T delta over the present tasks, J = diag(z) - z z^T
        grad = (grad + self.weight_decay * self.logits).where(mask, 0.0)
        beta1, beta2 = self.betas
        self.adam_steps += mask.long()
        steps = self.adam_steps.clamp_min(1).float()
        exp_avg = self.adam_exp_avg * beta1 + (1 - beta1) * grad
        exp_avg_sq = self.adam_exp_avg_sq * beta2 + (1 - beta2) * grad * grad
        self.adam_exp_avg.copy_(exp_avg.where(mask, self.adam_exp_avg))
        self.adam_exp_avg_sq.copy_(exp_avg_sq.where(mask, self.adam_exp_avg_sq))
        corrected_avg = self.adam_exp_avg / (1 - beta1 ** steps)
        corrected_sq = self.adam_exp_avg_sq / (1 - beta2 ** steps)
        update = self.lr * corrected_avg / (corrected_sq.sqrt() + 1e-8)
        self.logits -= update.where(mask, 0.0)
