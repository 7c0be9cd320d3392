"""GradNorm: balancing gradient norms by training rates (Chen et al., ICML 2018)."""

import torch
from torch import nn

from mtmm_plugins.weightings.gradient_base import GradientWeighting


class GradNormWeighting(GradientWeighting):
    """Learned weights ``w = T softmax(s)`` trained so each task's gradient norm tracks its training rate.

    ``G_i = w_i |g_i|`` (``g_i`` the task gradient on the shared representation or
    parameters); ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))`` with ``L(0)`` the first
    losses seen; auxiliary loss ``sum_i |G_i - stopgrad(mean(G) r_i^alpha)|``. ``combine``
    writes the auxiliary loss's gradient into ``s.grad`` (the model's optimizer steps it,
    as for any parameter of the weighting) and returns ``sum_i w_i g_i``.
    """

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation", alpha: float = 1.5):
        super().__init__(tasks, gradient_mode)
        self.alpha = float(alpha)
        self.weight_logits = nn.Parameter(torch.zeros(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))
        self.register_buffer("has_initial_losses", torch.zeros((), dtype=torch.bool))

    def current_weights(self) -> torch.Tensor:
        """``w = T softmax(s)`` ``[T]``, differentiable in ``s``."""
        return len(self.tasks) * torch.softmax(self.weight_logits, dim=0)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        self.check_losses(losses)
        return (self.current_weights().detach().to(losses.dtype) * losses).sum()

    def weights(self) -> torch.Tensor:
        return self.current_weights().detach()

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        self.check_grads(grads, losses)
        losses = losses.detach().float()
        if not bool(self.has_initial_losses):
            self.initial_losses.copy_(losses.clamp_min(1e-12))
            self.has_initial_losses.fill_(True)
        with torch.enable_grad():
            w = self.current_weights()
            norms = w * grads.detach().float().norm(dim=1).to(w.device)
            ratios = losses / self.initial_losses
            rates = ratios / ratios.mean().clamp_min(1e-12)
            target = (norms.mean() * rates**self.alpha).detach()
            auxiliary = (norms - target).abs().sum()
            (grad_s,) = torch.autograd.grad(auxiliary, self.weight_logits)
        self.weight_logits.grad = grad_s if self.weight_logits.grad is None else self.weight_logits.grad + grad_s
        return self.weighted_sum(w.detach(), grads)
