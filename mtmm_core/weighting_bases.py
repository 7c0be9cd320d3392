"""Base classes a weighting plugin can build on: the checks of its inputs and the rule for absent
tasks done once (every built-in weighting derives from these).

- :class:`LossWeighting`: ``forward(losses [T], present [T] | None) -> []`` and ``weights() -> [T]``.
- :class:`GradientWeighting`: gradient-level, ``combine(grads [T, P], losses [T], present) -> [P]``;
  a subclass implements ``aggregate`` on the present tasks only.
- :class:`GramianWeighting`: gradient-level methods whose weights depend on the gradients only
  through the Gramian ``G = J J^T``; a subclass implements ``weights_from_gramian``.

**Absent tasks.** ``present`` (bool ``[T]``, None = every task present) marks the tasks with
at least one labelled sample in the batch. A weighting computes the step exactly as the
same method would on a model that had only the present tasks: an absent task gets weight 0,
does not change the others' weights (a softmax or a mean runs over the present tasks only),
and a stateful method does not update its state from a loss the task did not have.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtmm_core.errors import NonFiniteError
from mtmm_kernels._validate import value_checks_enabled


class LossWeighting(nn.Module):
    """Base of the built-in weightings: combines per-task losses ``[T]`` into one scalar.

    Subclasses implement ``forward(losses [T], present [T] | None = None) -> []`` and
    ``weights() -> [T]``, and call ``check_losses`` first in ``forward``. Task ``i`` is ``tasks[i]``.
    """

    def __init__(self, tasks: list[str]):
        super().__init__()
        if isinstance(tasks, str) or not tasks:
            raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
        repeated = sorted({name for name in tasks if list(tasks).count(name) > 1})
        if repeated:
            raise ValueError(f"task names must be distinct; repeated: {', '.join(repeated)}")
        self.tasks = list(tasks)

    #: The name messages use: the built-ins set their registered name, other subclasses get their class name.
    method: str = "weighting"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "method" not in cls.__dict__:
            cls.method = cls.__name__

    def check_losses(self, losses: torch.Tensor) -> None:
        """Raise ValueError unless ``losses`` is ``[T]``, one loss per task in task order."""
        if losses.shape != (len(self.tasks),):
            raise ValueError(
                f"{self.method} expects losses of shape [{len(self.tasks)}] "
                f"(one per task: {', '.join(self.tasks)}), got {list(losses.shape)}"
            )

    def present_mask(self, losses: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """``present`` as a bool ``[T]`` on the losses' device (all True when None); no host sync."""
        if present is None:
            return torch.ones(len(self.tasks), dtype=torch.bool, device=losses.device)
        if present.shape != (len(self.tasks),):
            raise ValueError(f"{self.method}: present must be a bool [T={len(self.tasks)}] "
                             f"(one flag per task: {', '.join(self.tasks)}), got {list(present.shape)}")
        return present.to(device=losses.device, dtype=torch.bool)

    def check_finite(self, values: torch.Tensor, what: str, present: torch.Tensor | None = None) -> None:
        """Raise :class:`NonFiniteError` naming the present tasks whose row of ``values`` ``[T, ...]`` is not finite.

        One host sync; called by the stateful and gradient-level methods before any state changes.
        An absent task's row is not looked at (it takes no part in the step). Skipped while value
        checks are off (``mtmm_core.model.value_checks``): the trainer then finds a non-finite loss
        when it reads the losses, at its logging interval.
        """
        if not value_checks_enabled():
            return
        finite = torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
        if present is not None:
            finite = finite | ~present.to(finite.device)
        bad = [task for task, ok in zip(self.tasks, finite.tolist()) if not ok]
        if bad:
            raise NonFiniteError(f"{self.method}: the {what} of task {', '.join(map(repr, bad))} "
                                 "is NaN or infinite; nothing was updated")


def masked_softmax(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``softmax`` ``[T]`` over the present entries only; 0 for the absent ones (all 0 if none)."""
    masked = logits.masked_fill(~present, float("-inf"))
    weights = torch.softmax(masked, dim=0)
    return torch.nan_to_num(weights, nan=0.0)


def gramian(grads: torch.Tensor) -> np.ndarray:
    """``G = J J^T`` ``[T, T]`` as a float64 NumPy array, from task gradients ``J`` ``[T, P]``.

    The product is taken in the gradients' dtype when it is float32 (as TorchJD does; a
    float64 copy of ``J`` would double the memory traffic) and accumulated in float64
    otherwise; :func:`rank_tolerance` accounts for the input's precision.
    """
    if grads.dtype in (torch.float16, torch.bfloat16):
        grads = grads.float()
    product = grads @ grads.T
    gram = product.detach().double().cpu().numpy()
    return (gram + gram.T) / 2


GRADIENT_MODES = ("representation", "parameters")


class GradientWeighting(LossWeighting):
    """Base of the gradient-level weightings: ``combine(grads [T, P], losses [T], present [T]) -> [P]``.

    ``combine`` checks the shapes, drops the absent tasks (``present`` False), refuses a
    NaN or infinite loss or gradient of a present task (naming it) before any state
    changes (a :class:`GramianWeighting` reads that off the Gramian's diagonal, at no
    extra pass over the gradients), and hands the rest to :meth:`aggregate`, which subclasses implement on the
    ``t`` present tasks only. ``self.active`` ``[t]`` holds the present tasks' indices
    during the call.

    ``gradient_mode``: "representation" (gradients with respect to the fused features
    ``[B, D]``: one cheap backward per task through the heads) or "parameters" (with
    respect to the shared parameters). ``forward(losses)`` returns the plain sum of the
    present tasks' losses, the value to log and to validate with; training goes through
    ``combine``. ``weights()`` gives the last combination's weight per task (0 for an absent
    task; ones for the strategies that are not a weighting of the original gradients).
    """

    gradient_level = True
    #: True where ``aggregate`` refuses non-finite gradients itself, before any state changes,
    #: from numbers it computes anyway (the Gramian's diagonal, the norms), sparing a pass over ``[T, P]``.
    checks_own_gradients = False

    def __init__(self, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks)
        if gradient_mode not in GRADIENT_MODES:
            raise ValueError(f"gradient_mode must be one of {', '.join(GRADIENT_MODES)}, got {gradient_mode!r}")
        self.gradient_mode = gradient_mode
        self.register_buffer("task_weights", torch.ones(len(self.tasks)), persistent=False)
        self.active = torch.arange(len(self.tasks))

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        return losses.where(self.present_mask(losses, present), 0.0).sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()

    def check_grads(self, grads: torch.Tensor, losses: torch.Tensor) -> None:
        """Raise ValueError unless ``grads`` is ``[T, P]`` and ``losses`` is ``[T]``."""
        self.check_losses(losses)
        if grads.dim() != 2 or grads.shape[0] != len(self.tasks):
            raise ValueError(f"{self.method} expects task gradients of shape [T={len(self.tasks)}, P], "
                             f"got {list(grads.shape)}")

    def combine(self, grads: torch.Tensor, losses: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """The combined gradient ``[P]`` from task gradients ``[T, P]``, losses ``[T]`` and ``present`` ``[T]``."""
        self.check_grads(grads, losses)
        mask = self.present_mask(losses, present)
        self.check_finite(losses.detach(), "loss", mask)
        if not self.checks_own_gradients:  # a NaN or inf anywhere in a row makes its sum NaN or inf
            self.check_finite(grads.sum(dim=1), "gradient", mask)
        self.active = mask.cpu().nonzero().squeeze(1)
        self.task_weights.zero_()
        if self.active.numel() == 0:
            return torch.zeros_like(grads[0])
        if self.active.numel() == len(self.tasks):
            return self.aggregate(grads, losses.detach())
        return self.aggregate(grads[self.active.to(grads.device)], losses.detach()[self.active.to(losses.device)])

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """The combined gradient ``[P]`` from the present tasks' gradients ``[t, P]`` and losses ``[t]``."""
        raise NotImplementedError(f"{self.method} must implement aggregate(grads, losses) or combine()")

    def weighted_sum(self, alpha: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``sum_i alpha_i grads_i`` ``[P]`` over the present tasks; records ``alpha`` ``[t]`` for ``weights()``."""
        alpha = torch.as_tensor(alpha)
        if alpha.shape[0] == len(self.tasks):
            self.task_weights.copy_(alpha.detach().to(self.task_weights))
        else:
            self.task_weights.zero_()
            self.task_weights[self.active.to(self.task_weights.device)] = alpha.detach().to(self.task_weights)
        return alpha.to(device=grads.device, dtype=grads.dtype) @ grads


class GramianWeighting(GradientWeighting):
    """A gradient-level method whose weights depend on the gradients only through ``G = J J^T``.

    Subclasses implement :meth:`weights_from_gramian`; the combined gradient is
    ``sum_i w_i g_i``. The Gramian is formed once (``t^2 P`` multiply-adds) and the weights
    are solved for in float64 on the ``t x t`` matrix.
    """

    checks_own_gradients = True  # a NaN or inf anywhere in g_i makes G_ii NaN or inf
    gradient_length = 1  #: ``P`` of the gradients in the current call (their rounding grows with it)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        gram = gramian(grads)
        bad = [self.tasks[int(i)] for i in self.active[~np.isfinite(np.diag(gram))]]
        if bad:
            raise NonFiniteError(f"{self.method}: the gradient of task {', '.join(map(repr, bad))} is NaN or "
                                 "infinite (or its square overflows); nothing was updated")
        self.gradient_length = grads.shape[1]  # P, for the rank cut-off (solvers.rank_tolerance)
        weights = self.weights_from_gramian(gram, grads.dtype)
        return self.weighted_sum(torch.from_numpy(np.asarray(weights, dtype=np.float64)), grads)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        """Weights ``[t]`` from the present tasks' Gramian ``[t, t]`` (float64); ``dtype`` is the gradients'
        and ``self.gradient_length`` their number of entries ``P``."""
        raise NotImplementedError
