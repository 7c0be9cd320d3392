"""What every built-in weighting shares: its task list, the check of the losses it gets, and
the rule for tasks that have no labelled sample in a batch.

**Absent tasks.** ``present`` (bool ``[T]``, None = every task present) marks the tasks with
at least one labelled sample in the batch. A weighting computes the step exactly as the
same method would on a model that had only the present tasks: an absent task gets weight 0,
does not change the others' weights (a softmax or a mean runs over the present tasks only),
and a stateful method does not update its state from a loss the task did not have.
"""

import torch
from torch import nn

from mtmm_core.errors import NonFiniteError


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
        An absent task's row is not looked at (it takes no part in the step).
        """
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
