"""Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019)."""

import torch

from mtmm_core.weighting_bases import LossWeighting


class DynamicWeightAverage(LossWeighting):
    """Weights from each task's rate of descent over the last two epochs: losses ``[T]`` to ``sum_i w_i L_i``.

    ``w_k = T * softmax(r / temperature)_k`` with ``r_k = Lbar_k(t-1) / Lbar_k(t-2)``, where
    ``Lbar`` are epoch-mean losses the trainer passes to :meth:`end_epoch`. Every weight is 1
    until two epochs have ended (per task: ``r_k = 1`` until task ``k`` has two epochs of
    history). In a batch where only the tasks ``S`` are present, the softmax runs over ``S``:
    ``w_k = |S| * softmax_S(r / temperature)_k``. The loss history lives in buffers (saved
    in checkpoints).
    """

    method = "dwa"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], temperature: float = 2.0):
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        count = len(self.tasks)
        self.register_buffer("epoch_losses", torch.zeros(2, count))  # row 0: last epoch, row 1: the one before
        self.register_buffer("epochs_seen", torch.zeros(count, dtype=torch.long))  # epochs with a loss, per task
        self.register_buffer("task_weights", torch.ones(count))

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_losses(losses)
        mask = self.present_mask(losses, present)
        weights = self.task_weights.to(losses).where(mask, 0.0)
        # w = T softmax(r / temperature); over the present tasks S: |S| w_k / sum_S w_j
        weights = weights * mask.sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
        return (weights * losses).where(mask, 0.0).sum()

    def weights(self) -> torch.Tensor:
        return self.task_weights.clone()

    @torch.no_grad()
    def end_epoch(self, epoch_mean_losses: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Record this epoch's mean losses ``[T]`` and set the weights for the next epoch.

        ``present`` (bool ``[T]``): the tasks that had a labelled sample this epoch; the
        others keep their history unchanged.
        """
        self.check_losses(epoch_mean_losses)
        mask = self.present_mask(self.epoch_losses[0], present)
        self.check_finite(epoch_mean_losses[:, None], "epoch-mean loss", mask)
        latest = epoch_mean_losses.detach().to(self.epoch_losses)
        self.epoch_losses[1] = self.epoch_losses[1].where(~mask, self.epoch_losses[0])
        self.epoch_losses[0] = self.epoch_losses[0].where(~mask, latest)
        self.epochs_seen += mask.long()
        tiny = torch.finfo(self.epoch_losses.dtype).tiny
        ratios = self.epoch_losses[0] / self.epoch_losses[1].clamp_min(tiny)
        ratios = ratios.where(self.epochs_seen >= 2, 1.0)
        self.task_weights.copy_(len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0))
