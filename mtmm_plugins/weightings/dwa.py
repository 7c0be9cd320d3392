"""Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019)."""

import torch

from mtmm_plugins.weightings.base import LossWeighting


class DynamicWeightAverage(LossWeighting):
    """Weights from each task's rate of descent over the last two epochs: losses ``[T]`` to ``sum_i w_i L_i``.

    ``w_k = T * softmax(r / temperature)_k`` with ``r_k = Lbar_k(t-1) / Lbar_k(t-2)``, where
    ``Lbar`` are epoch-mean losses the trainer passes to :meth:`end_epoch`. Every weight is 1
    until two epochs have ended. The loss history lives in buffers (saved in checkpoints).
    """

    def __init__(self, *, tasks: list[str], temperature: float = 2.0):
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        count = len(self.tasks)
        self.register_buffer("epoch_losses", torch.zeros(2, count))  # row 0: last epoch, row 1: the one before
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_weights", torch.ones(count))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        self.check_losses(losses)
        return (self.task_weights.to(losses.dtype) * losses).sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()

    @torch.no_grad()
    def end_epoch(self, epoch_mean_losses: torch.Tensor) -> None:
        """Record this epoch's mean losses ``[T]`` and set the weights for the next epoch."""
        self.check_losses(epoch_mean_losses)
        self.epoch_losses[1] = self.epoch_losses[0]
        self.epoch_losses[0] = epoch_mean_losses.detach().to(self.epoch_losses)
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            ratios = self.epoch_losses[0] / self.epoch_losses[1].clamp_min(torch.finfo(self.epoch_losses.dtype).tiny)
            self.task_weights.copy_(len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0))
