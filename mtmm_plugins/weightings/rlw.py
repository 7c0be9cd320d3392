"""Random Loss Weighting (Lin et al., TMLR 2022)."""

import torch

from mtmm_core.weighting_bases import LossWeighting, masked_softmax

DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


class RandomLossWeighting(LossWeighting):
    """Fresh random weights each training step: losses ``[T]`` to ``sum_i w_i L_i``, ``w`` on the simplex.

    ``distribution`` picks how ``w`` is drawn (the paper's Section 3 and Table 6):

    - ``"normal"`` (default, LibMTL's): ``w = softmax(z)``, ``z ~ N(0, I)``;
    - ``"uniform"``: ``w = u / sum(u)``, ``u_i ~ U(0, 1)``;
    - ``"dirichlet"``: ``w ~ Dir(concentration * 1)`` (drawn as normalised Gamma variables).

    The weights sum to 1 (not T) over the tasks present in the batch; an absent task gets 0
    and the normalisation runs over the present ones. One draw of ``T`` numbers per step
    whatever is present, so the random stream does not depend on the labels. In eval mode
    every present weight is ``1 / t`` (their expectation), so validation losses are
    comparable between steps. ``weights()`` gives the last draw.
    """

    method = "rlw"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], distribution: str = "normal", concentration: float = 1.0):
        super().__init__(tasks)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"rlw distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
        if not concentration > 0:
            raise ValueError(f"rlw concentration must be > 0, got {concentration}")
        self.distribution, self.concentration = distribution, float(concentration)
        self.register_buffer("task_weights", torch.full((len(self.tasks),), 1.0 / len(self.tasks)), persistent=False)

    def draw(self, present: torch.Tensor) -> torch.Tensor:
        """One random weight vector ``[T]``: non-negative, summing to 1 over ``present``, 0 elsewhere."""
        count, device = len(self.tasks), present.device
        if self.distribution == "normal":
            return masked_softmax(torch.randn(count, device=device), present)
        if self.distribution == "uniform":
            raw = torch.rand(count, device=device)
        else:  # dirichlet: normalised Gamma(concentration) draws; a sub-vector renormalised stays Dirichlet
            concentration = torch.full((count,), self.concentration, device=device)
            raw = torch.distributions.Gamma(concentration, torch.ones_like(concentration)).sample()
        raw = raw * present
        return raw / raw.sum().clamp_min(torch.finfo(raw.dtype).tiny)

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        mask = self.present_mask(losses, present)
        if self.training:
            weights = self.draw(mask)
            self.task_weights.copy_(weights)
        else:
            weights = mask.to(losses.dtype) / mask.sum().clamp_min(1)
        return (weights.to(losses.dtype) * losses).where(mask, 0.0).sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()
