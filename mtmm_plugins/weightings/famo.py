"""Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023)."""

import torch
from torch import nn

from mtmm_plugins.weightings.base import LossWeighting


class FastAdaptiveWeighting(LossWeighting):
    """FAMO: losses ``[T]`` to ``sum_i z_i log D_i / c`` with ``z = softmax(xi)``, ``D_i = L_i - min_i + eps``.

    ``c = sum_i z_i / D_i`` is a constant of the step, so the gradient on ``L_i`` is
    ``z_i / (c D_i)`` (these effective weights sum to 1; ``weights()`` reports them). The
    logits ``xi`` are not trained by the model's optimizer: after each optimizer step the
    trainer calls :meth:`after_step` with the losses of the same batch under the updated
    model, and ``xi`` takes one Adam step (``lr``, ``weight_decay``) on
    ``J_softmax^T (log D_before - log D_after)``. ``xi``, Adam's moments and the last
    ``log D`` are saved in checkpoints.
    """

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
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_weights", torch.full((count,), 1.0 / count), persistent=False)

    def _log_gaps(self, losses: torch.Tensor) -> torch.Tensor:
        """``log D`` ``[T]`` with ``D_i = max(L_i - min_i, 0) + eps``."""
        return torch.log((losses - self.min_losses.to(losses.dtype)).clamp_min(0) + self.eps)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        self.check_losses(losses)
        z = torch.softmax(self.logits.detach(), dim=0).to(losses.dtype)
        log_gaps = self._log_gaps(losses)
        c = (z / log_gaps.exp()).sum().detach()
        with torch.no_grad():
            self.log_losses_before.copy_(log_gaps)
            self.task_weights.copy_(z / (c * log_gaps.exp()))
        return (z * log_gaps).sum() / c

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()

    @torch.no_grad()
    def after_step(self, losses_after: torch.Tensor) -> None:
        """One Adam step on ``xi`` from the losses ``[T]`` of the same batch after the model's update."""
        self.check_losses(losses_after)
        delta = self.log_losses_before - self._log_gaps(losses_after.detach().float())
        z = torch.softmax(self.logits, dim=0)
        grad = z * delta - z * (z * delta).sum()  # J_softmax^T delta, J = diag(z) - z z^T
        grad = grad + self.weight_decay * self.logits
        beta1, beta2 = self.betas
        self.adam_steps += 1
        step = int(self.adam_steps)
        self.adam_exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.adam_exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        corrected_avg = self.adam_exp_avg / (1 - beta1 ** step)
        corrected_sq = self.adam_exp_avg_sq / (1 - beta2 ** step)
        self.logits -= self.lr * corrected_avg / (corrected_sq.sqrt() + 1e-8)
