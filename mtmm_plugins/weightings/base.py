"""What every built-in weighting shares: its task list and the check of the losses it gets."""

import torch
from torch import nn


class LossWeighting(nn.Module):
    """Base of the built-in weightings: combines per-task losses ``[T]`` into one scalar.

    Subclasses implement ``forward(losses [T]) -> []`` and ``weights() -> [T]``, and call
    ``check_losses`` first in ``forward``. Task ``i`` is ``tasks[i]``.
    """

    def __init__(self, tasks: list[str]):
        super().__init__()
        if isinstance(tasks, str) or not tasks:
            raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
        repeated = sorted({name for name in tasks if list(tasks).count(name) > 1})
        if repeated:
            raise ValueError(f"task names must be distinct; repeated: {', '.join(repeated)}")
        self.tasks = list(tasks)

    def check_losses(self, losses: torch.Tensor) -> None:
        """Raise ValueError unless ``losses`` is ``[T]``, one loss per task in task order."""
        if losses.shape != (len(self.tasks),):
            raise ValueError(
                f"{type(self).__name__} expects losses of shape [{len(self.tasks)}] "
                f"(one per task: {', '.join(self.tasks)}), got {list(losses.shape)}"
            )
