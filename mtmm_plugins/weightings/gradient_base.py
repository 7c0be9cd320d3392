"""What every gradient-level weighting shares: the mode, the ``combine`` contract and min-norm helpers.

A gradient-level weighting sees the per-task gradients ``grads [T, P]`` (each task's
loss differentiated with respect to the shared representation, or the shared
parameters, flattened to ``P`` numbers) and returns one combined gradient ``[P]``.
:func:`mtmm_core.weighting.weighted_backward` computes the gradients and applies the result.
"""

import torch

from mtmm_plugins.weightings.base import LossWeighting

GRADIENT_MODES = ("representation", "parameters")


class GradientWeighting(LossWeighting):
    """Base of the gradient-level weightings: ``combine(grads [T, P], losses [T]) -> [P]``.

    ``gradient_mode``: "representation" (gradients with respect to the fused features
    ``[B, D]``: one cheap backward per task through the heads) or "parameters" (with
    respect to the shared parameters). ``forward(losses)`` returns the plain sum, the
    value to log and to validate with; training goes through ``combine``. ``weights()``
    gives the last combination's weight per task (for strategies that combine linearly).
    """

    gradient_level = True

    def __init__(self, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks)
        if gradient_mode not in GRADIENT_MODES:
            raise ValueError(f"gradient_mode must be one of {', '.join(GRADIENT_MODES)}, got {gradient_mode!r}")
        self.gradient_mode = gradient_mode
        self.register_buffer("task_weights", torch.ones(len(self.tasks)), persistent=False)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        self.check_losses(losses)
        return losses.sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()

    def check_grads(self, grads: torch.Tensor, losses: torch.Tensor) -> None:
        """Raise ValueError unless ``grads`` is ``[T, P]`` and ``losses`` is ``[T]``."""
        self.check_losses(losses)
        if grads.dim() != 2 or grads.shape[0] != len(self.tasks):
            raise ValueError(f"{type(self).__name__} expects task gradients of shape [T={len(self.tasks)}, P], "
                             f"got {list(grads.shape)}")

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """The combined gradient ``[P]`` from task gradients ``[T, P]`` and losses ``[T]``."""
        raise NotImplementedError

    def weighted_sum(self, alpha: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``sum_i alpha_i grads_i`` ``[P]``; records ``alpha`` ``[T]`` for ``weights()``."""
        self.task_weights.copy_(alpha.detach().to(self.task_weights))
        return alpha.to(grads.dtype) @ grads


def two_point_min_norm(aa: float, ab: float, bb: float) -> float:
    """``gamma`` in [0, 1] minimising ``|gamma a + (1 - gamma) b|^2`` from the dot products."""
    denominator = aa - 2 * ab + bb
    if denominator <= 0:
        return 0.5
    return min(1.0, max(0.0, (bb - ab) / denominator))


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v`` ``[T]`` onto ``{alpha >= 0, sum alpha = 1}``."""
    descending = torch.sort(v, descending=True).values
    thresholds = (descending.cumsum(0) - 1) / torch.arange(1, v.numel() + 1, dtype=v.dtype)
    last = int((descending > thresholds).nonzero().max())
    return (v - thresholds[last]).clamp_min(0)


def min_norm_weights(gram: torch.Tensor, iterations: int = 500, tol: float = 1e-10) -> torch.Tensor:
    """Weights ``alpha`` ``[T]`` on the simplex minimising ``|sum_i alpha_i g_i|^2`` given ``gram`` = ``G G^T``.

    Exact for two tasks; accelerated projected gradient (FISTA) on the ``T x T`` Gramian otherwise.
    """
    gram = gram.detach().double().cpu()
    count = gram.shape[0]
    if count == 1:
        return torch.ones(1, dtype=torch.float64)
    if count == 2:
        gamma = two_point_min_norm(gram[0, 0].item(), gram[0, 1].item(), gram[1, 1].item())
        return torch.tensor([gamma, 1 - gamma], dtype=torch.float64)
    step = 1.0 / max(float(torch.linalg.eigvalsh(gram).max()), 1e-30)
    alpha = torch.full((count,), 1.0 / count, dtype=torch.float64)
    lookahead, momentum = alpha, 1.0
    for _ in range(iterations):
        new = project_to_simplex(lookahead - step * (gram @ lookahead))
        next_momentum = (1 + (1 + 4 * momentum**2) ** 0.5) / 2
        lookahead = new + (momentum - 1) / next_momentum * (new - alpha)
        converged = float((new - alpha).abs().max()) < tol
        alpha, momentum = new, next_momentum
        if converged:
            break
    return alpha
