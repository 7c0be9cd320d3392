"""GradNorm: balancing gradient norms by training rates (Chen et al., ICML 2018)."""

import torch
from torch import nn

from mtmm_core.errors import NonFiniteError
from mtmm_core.weighting_bases import masked_softmax
from mtmm_core.weighting_bases import GradientWeighting
from mtmm_kernels._validate import value_checks_enabled


class GradNormWeighting(GradientWeighting):
    """Learned weights ``w = T softmax(s)`` trained so each task's gradient norm tracks its training rate.

    ``G_i = w_i |g_i|`` (``g_i`` the task gradient on the shared representation or
    parameters); ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``; auxiliary loss
    ``sum_i |G_i - stopgrad(mean(G) r_i^alpha)|`` (Chen et al. 2018, eq. 1-2). ``combine``
    writes the auxiliary loss's gradient into ``s.grad`` (the model's optimizer steps it,
    as for any parameter of the weighting) and returns ``sum_i w_i g_i``.

    ``L_i(0)`` is task ``i``'s first loss *in a batch where it is present* (the paper takes
    the loss at step 0; LibMTL the first epoch's mean). Over the tasks ``S`` present in a
    batch: ``w = |S| softmax_S(s)``, and the means and the auxiliary loss run over ``S``, so
    an absent task's ``s_i`` gets no gradient.
    """

    method = "gradnorm"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation", alpha: float = 1.5):
        super().__init__(tasks, gradient_mode)
        if not alpha >= 0:
            raise ValueError(f"gradnorm alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.weight_logits = nn.Parameter(torch.zeros(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))
        self.register_buffer("has_initial_loss", torch.zeros(len(self.tasks), dtype=torch.bool))

    def current_weights(self, present: torch.Tensor | None = None) -> torch.Tensor:
        """``w = t softmax_S(s)`` ``[T]`` over the present tasks ``S`` (all when None), differentiable in ``s``."""
        mask = self.present_mask(self.weight_logits, present)
        return mask.sum() * masked_softmax(self.weight_logits, mask)

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        mask = self.present_mask(losses, present)
        weights = self.current_weights(mask.to(self.weight_logits.device)).detach().to(losses)
        return (weights * losses).where(mask, 0.0).sum()

    def weights(self) -> torch.Tensor:
        return self.current_weights().detach()

    checks_own_gradients = True  # from the norms, below

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        gradient_norms = torch.linalg.vector_norm(grads.detach().float(), dim=1)  # [t]; NaN or inf stays so
        if value_checks_enabled() and not bool(torch.isfinite(gradient_norms).all()):
            bad = [self.tasks[int(i)] for i in self.active[~torch.isfinite(gradient_norms).cpu()]]
            raise NonFiniteError(f"{self.method}: the gradient of task {', '.join(map(repr, bad))} is NaN or "
                                 "infinite (or its square overflows); nothing was updated")
        active = self.active.to(self.weight_logits.device)
        losses = losses.detach().float().to(self.weight_logits.device)
        first = ~self.has_initial_loss[active]
        self.initial_losses[active] = torch.where(first, losses.clamp_min(1e-12), self.initial_losses[active])
        self.has_initial_loss[active] = True
        with torch.enable_grad():
            w = len(active) * torch.softmax(self.weight_logits[active], dim=0)  # [t]
            norms = w * gradient_norms.to(w.device)
            ratios = losses / self.initial_losses[active]
            rates = ratios / ratios.mean().clamp_min(1e-12)
            target = (norms.mean() * rates**self.alpha).detach()
            auxiliary = (norms - target).abs().sum()
            (grad_s,) = torch.autograd.grad(auxiliary, self.weight_logits)
        self.weight_logits.grad = grad_s if self.weight_logits.grad is None else self.weight_logits.grad + grad_s
        return self.weighted_sum(w.detach(), grads)
