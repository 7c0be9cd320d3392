"""DB-MTL: dual balancing of loss scales and gradient magnitudes (Lin et al., arXiv 2308.12029)."""

from __future__ import annotations

import math
import warnings

import torch

from mtmm_core.weighting_bases import GradientWeighting
from mtmm_kernels._validate import value_checks_enabled


class DualBalancing(GradientWeighting):
    """DB-MTL: log-transformed losses, and every task's smoothed gradient scaled to the largest norm.

    Per step ``k``, for each present task ``i`` with gradient ``g_i`` ``[P]`` and loss ``L_i``
    (Lin et al. 2023, Algorithm 1):

    - loss-scale balancing: the gradient of ``log(L_i + eps)`` is ``g_i / (L_i + eps)``;
    - an exponential moving average ``ghat_i <- beta_k ghat_i + (1 - beta_k) g_i / (L_i + eps)``,
      ``ghat_i`` starting at 0 with no bias correction, ``beta_k = beta / k_i^beta_sigma`` and
      ``k_i`` the number of steps task ``i`` has taken part in (this one included);
    - gradient-magnitude balancing: ``alpha_i = max_j |ghat_j| / |ghat_i|`` (max over the present
      tasks; a zero ``ghat_i`` gets ``alpha_i = 0``), combined ``sum_i alpha_i ghat_i`` ``[P]``:
      every task's direction ``ghat_i / |ghat_i|`` scaled to the largest norm
      (the paper's ``alpha_k = max_j |ghat_j|`` times ``sum_i ghat_i / |ghat_i|``).

    ``weights()`` reports ``alpha`` ``[T]``, the multipliers of the smoothed log-loss gradients
    ``ghat_i`` (not of ``g_i``; with ``beta = 0`` the weight of ``g_i`` is ``alpha_i / (L_i + eps)``);
    0 for an absent task. ``forward`` is the plain sum of the present tasks' losses.

    State: ``ema`` ``[T, P]`` (the ``ghat_i``, in the gradients' dtype) and ``ema_steps`` ``[T]``,
    both saved by ``state_dict``. ``P`` is known at the first ``combine`` only: until then
    ``ema`` is ``[T, 0]``, and ``load_state_dict`` resizes it to the saved shape. An absent task
    takes no part: its row and step count are left as they are, and the maximum runs over the
    present tasks. When ``P`` changes (in ``gradient_mode="representation"`` a smaller last batch
    has fewer rows) the moving averages cannot continue: they restart from 0 (warned once).

    ``gradient_mode``: the paper and LibMTL average gradients of the shared *parameters*
    (LibMTL refuses representation gradients for DB-MTL). With ``"representation"`` the average
    runs coordinate by coordinate over the flattened ``[B * D]`` gradients of successive batches,
    whose rows are different samples; ``beta = 0`` (no averaging) is the variant that carries
    over exactly, and the default there (``beta=None``: 0.9 with "parameters", 0 with
    "representation"; on avdigits, 10 epochs, averaging representation gradients with 0.9
    gave image_digit accuracy 0.39 against 0.97 for equal weighting).

    Compared with LibMTL's ``DB_MTL`` (defaults ``DB_beta = 0.9``, ``DB_beta_sigma = 0``, ``eps =
    1e-8`` in ``log(L + 1e-8)``; the same update ``ghat <- g + beta_k (ghat - g)`` from zeros, no
    bias correction): LibMTL divides by ``|ghat_i| + 1e-8`` (factor ``|ghat_i| / (|ghat_i| +
    1e-8)`` on each ``alpha_i``; here exact, with 0 for a zero row); LibMTL counts one global step
    (``beta_k`` differs only when ``beta_sigma != 0`` and some task was absent); LibMTL returns
    weights of ones. TorchJD has no DB-MTL.
    """

    method = "db_mtl"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation", beta: float | None = None,
                 beta_sigma: float = 0.0, eps: float = 1e-8):
        super().__init__(tasks, gradient_mode)
        if beta is None:  # the paper's 0.9 over parameters; no averaging over batches of different samples
            beta = 0.9 if gradient_mode == "parameters" else 0.0
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"db_mtl beta (the moving average's decay) must be in [0, 1), got {beta}")
        if not (math.isfinite(self.beta_sigma) and self.beta_sigma >= 0.0):
            raise ValueError(f"db_mtl beta_sigma (decay exponent: beta / k^beta_sigma) must be finite and >= 0, "
                             f"got {beta_sigma}")
        if not (math.isfinite(self.eps) and self.eps > 0.0):
            raise ValueError(f"db_mtl eps (in log(L + eps)) must be finite and > 0, got {eps}")
        self.register_buffer("ema", torch.zeros(len(self.tasks), 0))
        self.register_buffer("ema_steps", torch.zeros(len(self.tasks), dtype=torch.long))
        self._warned_restart = False

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "ema")
        if (isinstance(saved, torch.Tensor) and saved.dim() == 2 and saved.shape[0] == len(self.tasks)
                and saved.shape != self.ema.shape):
            self.ema = torch.zeros(saved.shape, dtype=self.ema.dtype, device=self.ema.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _prepare_state(self, grads: torch.Tensor) -> None:
        """Give ``ema`` its ``[T, P]`` shape: at the first call, or (restarting) when ``P`` changed."""
        size = grads.shape[1]
        if self.ema.shape[1] == size:
            return
        if self.ema.shape[1] != 0 and bool((self.ema_steps > 0).any()):
            if not self._warned_restart:
                warnings.warn(f"DualBalancing: the gradients have {size} numbers, the moving averages "
                              f"{self.ema.shape[1]}; restarting the averages (a batch of another size in "
                              "gradient_mode='representation'?)", RuntimeWarning, stacklevel=3)
                self._warned_restart = True
            self.ema_steps.zero_()
        dtype = grads.dtype if grads.dtype.is_floating_point else self.ema.dtype
        self.ema = torch.zeros(len(self.tasks), size, dtype=dtype, device=grads.device)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_grads(grads, losses)
        mask = self.present_mask(losses, present)
        low = (losses.detach() + self.eps <= 0) & mask
        if value_checks_enabled() and bool(low.any()):
            bad = ", ".join(repr(task) for task, flag in zip(self.tasks, low.tolist()) if flag)
            raise ValueError(f"{self.method}: the loss of task {bad} is <= -eps ({-self.eps}); "
                             "log(L + eps) needs L + eps > 0; nothing was updated")
        return super().combine(grads, losses, present)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        if self.beta != 0:
            self._prepare_state(grads)  # before counting this step: a restart zeroes the counts
        steps_index = self.active.to(self.ema_steps.device)
        self.ema_steps[steps_index] += 1
        scales = 1.0 / (losses.detach().double() + self.eps)  # [t]: grad log(L + eps) = g / (L + eps)
        if self.beta == 0:  # no average to keep: ghat_i = g_i / (L_i + eps)
            norms = torch.linalg.vector_norm(grads, dim=1).double() * scales.to(grads.device)
            alpha = torch.where(norms > 0, norms.max() / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
            self.weighted_sum(alpha, grads)  # records alpha, the multipliers of ghat
            return (alpha * scales.to(alpha.device)).to(device=grads.device, dtype=grads.dtype) @ grads
        betas = (self.beta / self.ema_steps[steps_index].double() ** self.beta_sigma).tolist()
        for row, (task, beta) in enumerate(zip(self.active.tolist(), betas)):  # in place, one row at a time
            self.ema[task].mul_(beta).add_(grads[row].to(self.ema), alpha=(1.0 - beta) * float(scales[row]))
        averaged = self.ema[self.active.to(self.ema.device)]
        norms = torch.linalg.vector_norm(averaged, dim=1).double()  # [t]
        alpha = torch.where(norms > 0, norms.max() / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
        return self.weighted_sum(alpha, averaged).to(grads.dtype)
