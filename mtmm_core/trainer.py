"""The training loop, top to bottom: data, model, optimiser, epochs, checkpoints, evaluation.

A run folder holds ``config.yaml``, ``model.yaml`` (the completed model spec), ``metrics.jsonl`` (one line per epoch),
``last.pt`` (everything needed to resume), ``best.pt`` (model weights of the best
epoch on the monitored validation metric) and ``test_metrics.json``. One process owns it,
and an epoch's log line and checkpoints become visible together (:mod:`mtmm_core.run_folder`).
Ctrl-C or SIGTERM stops after the current step with a checkpoint that resumes exactly
(:mod:`mtmm_core.interrupts`). A config's ``transfer`` section starts from another run's
weights and freezes modules (:mod:`mtmm_core.transfer`).

A training step never waits for the device: each batch's values are checked on the host as it
is loaded (:func:`~mtmm_core.evaluation.check_batch`), the step runs with the model's value
checks off (``value_checks(False)``), and the per-task loss sums and present-counts accumulate
on the device. They are read back every ``train.log_every`` steps and at the end of the epoch
(the progress bar, the check for a non-finite loss, and under torchrun the stop vote).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from mtmm_core import distributed
from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.config import ConfigWarning, TrainSettings
from mtmm_core.data import complete_model_spec, load_dataset
from mtmm_core.data_fit import require_model_fit
from mtmm_core.errors import RunError, UsageError
from mtmm_core.contracts import Batch
from mtmm_core.evaluation import check_batch, evaluate, is_better, to_device
from mtmm_core.interrupts import StopSignals, TrainingInterrupted
from mtmm_core.model import ModelOutput, MultimodalMultitaskModel, value_checks
from mtmm_core.progress import EpochProgress, epoch_summary, run_header, terminal_width
from mtmm_core.run_folder import RunFolder
from mtmm_core.spec import build_model
from mtmm_core.transfer import freeze, load_weights, transfer_settings
from mtmm_core.weighting import call_with_present, weighted_backward, weighted_total


class NonFiniteLossError(RunError, FloatingPointError):
    """A task's loss became NaN or infinite; the last good checkpoint is kept."""


def choose_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_threads(requested: int) -> int:
    """Torch's CPU thread count: ``requested`` when > 0; else ``OMP_NUM_THREADS`` when set; else the
    cores this process may run on (``os.sched_getaffinity``: a container's or ``taskset``'s limit, not the
    machine's) shared among the processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``)."""
    if requested > 0:
        return requested
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, cores // max(1, int(local) if local.isdigit() else 1))


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def forward_and_losses(model: MultimodalMultitaskModel, batch: Batch) -> tuple[ModelOutput, torch.Tensor]:
    """The model's output on ``batch`` and its per-task losses ``[T]``: what ``train.compile`` compiles."""
    output = model(batch.inputs, batch.lengths, batch.present)
    return output, model.task_losses(output, batch.targets, batch.task_masks)


def tensorboard_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class Trainer:
    """Trains one model on one data set and writes a run folder; ``run()`` returns the test metrics.

    ``resume`` continues the run in ``out_dir``; ``force`` starts a new run in a folder that
    holds other files (replacing an old run's); ``read_only`` opens a run to evaluate it,
    without taking the folder's lock or writing to it. ``on_epoch_end(record)`` sees each epoch's
    ``metrics.jsonl`` record after it is saved (``mtmm tune`` prunes a trial by raising from it).
    """

    def __init__(self, config: dict[str, Any], out_dir: str | Path, resume: bool = False, force: bool = False,
                 read_only: bool = False, on_epoch_end: Callable[[dict[str, Any]], None] | None = None):
        self.config = config
        self.on_epoch_end = on_epoch_end  # called with each epoch's record once it is saved; may raise to stop
        self.settings = TrainSettings(**config["train"])
        self.out_dir = Path(out_dir)
        self.folder = RunFolder(self.out_dir)
        self.read_only = read_only
        self.signals = StopSignals()  # replaced by the active one while run() trains
        self.device = choose_device(self.settings.device)
        self.context = distributed.setup(self.device.type, self.settings.collective_timeout)
        if self.context.active and self.device.type == "cuda":
            self.device = torch.device("cuda", self.context.local_rank)
        self.threads = cpu_threads(self.settings.threads)
        torch.set_num_threads(self.threads)
        seed_everything(self.settings.seed)
        self.dataset = load_dataset(config["data"])
        self.model_spec = complete_model_spec(config["model"], self.dataset)
        require_model_fit(self.model_spec, self.dataset)  # e.g. a sequence longer than its encoder's max_len
        self.model = build_model(self.model_spec).to(self.device)
        self.transfer = transfer_settings(config.get("transfer"))
        if self.transfer.init_from and not resume:  # a resumed run restores its own weights instead
            report = load_weights(self.model, self.transfer.init_from, self.transfer.init_prefixes)
            if self.context.is_main:
                print(report, file=sys.stderr)
        # Frozen parameters keep requires_grad False: they get no gradient, so AdamW gives them no state
        # and no update (weight decay included) until they are unfrozen.
        self.frozen = freeze(self.model, self.transfer.freeze)  # [(name, parameter)]
        if self.frozen and self.context.is_main:
            until = (f"until epoch {self.transfer.unfreeze_at_epoch}" if self.transfer.unfreeze_at_epoch
                     else "for the whole run")
            print(f"frozen {len(self.frozen)} parameter tensors under {', '.join(self.transfer.freeze)} {until}",
                  file=sys.stderr)
        distributed.broadcast_parameters(self.model, self.context)
        torch.manual_seed(self.settings.seed + 1_000_003 * self.context.rank)  # own dropout draws per rank
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.settings.lr,
                                           weight_decay=self.settings.weight_decay)
        train_rows = len(self.dataset.splits["train"])
        if self.settings.batch_size > train_rows and self.context.is_main and not read_only:
            warnings.warn(f"train.batch_size {self.settings.batch_size} is larger than the training split "
                          f"({train_rows} samples); each step uses the whole split", ConfigWarning, stacklevel=2)
        self.steps_per_epoch = math.ceil(train_rows / self.settings.batch_size)
        total_steps = self.steps_per_epoch * self.settings.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total_steps, self.settings.warmup_fraction))
        self.epoch, self.step_in_epoch, self.best, self.stale_epochs = 0, 0, None, 0
        self.best_epoch: int | None = None
        self._epoch_started = time.perf_counter()
        self._tensorboard: Any = None  # created on the first epoch's log, False when unavailable
        # The epoch's per-task loss sums and present-counts stay on the device (float64 where it has it),
        # updated by every step and read every train.log_every steps; last.pt holds a CPU copy.
        self._sum_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.epoch_loss_sums = torch.zeros(len(self.model.tasks), dtype=self._sum_dtype, device=self.device)
        self.epoch_present_counts = torch.zeros_like(self.epoch_loss_sums)
        self.epoch_regularization_sum: float | torch.Tensor = 0.0  # of the architecture's regularization(), if any
        self._stop_votes = torch.zeros(1, dtype=self._sum_dtype, device=self.device)  # ranks asked to stop (torchrun)
        self._first_bad = torch.zeros(len(self.model.tasks), dtype=torch.long, device=self.device)  # see _step
        self._read_at = 0  # the step_in_epoch of the last read of the losses
        self._forward_and_losses = torch.compile(forward_and_losses) if self.settings.compile else forward_and_losses
        self._open_run_folder(resume, force)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Train until the last epoch or early stopping, then evaluate the best weights on the test split.

        SIGINT or SIGTERM stops after the current step: ``last.pt`` is saved at that step
        boundary and :class:`~mtmm_core.interrupts.TrainingInterrupted` is raised. Under
        torchrun the process group is left at the end (every rank waits for the others first);
        a collective that times out ends every rank with a :class:`RunError` naming the stalled rank.
        """
        if self.read_only:
            raise RunError(f"this Trainer opened {self.out_dir} read-only (to evaluate it); it cannot train")
        if self.context.is_main:
            print(run_header(out_dir=self.out_dir, device=self.device, threads=self.threads,
                             processes=self.context.world_size, data_name=str(self.config["data"]["name"]),
                             split_sizes={name: len(split) for name, split in self.dataset.splits.items()},
                             model_spec=self.model_spec, model=self.model, settings=self.settings,
                             steps_per_epoch=self.steps_per_epoch, width=terminal_width()), file=sys.stderr)
        try:
            with StopSignals(distributed=self.context.active, announce=self.context.is_main) as self.signals:
                while self.epoch < self.settings.epochs:
                    self._train_epoch()
                    if self._end_epoch():
                        break
            scoring = (f"stopped while scoring the test split; training is complete and saved, and "
                       f"`{self._resume_command()}` scores it again")
            with StopSignals(stop_now=scoring) as self.signals:
                metrics = self.test()
                distributed.barrier(self.context)
            return metrics
        except Exception as error:
            if self.context.active and distributed.is_collective_failure(error):
                raise RunError(
                    f"rank {self.context.rank}: a collective operation failed or did not complete within "
                    f"train.collective_timeout ({self.settings.collective_timeout:g} s): "
                    f"{distributed.stalled_ranks_message(self.context)}; stopping every process. "
                    f"The last checkpoint is {self.out_dir / 'last.pt'}") from error
            raise
        finally:
            self.signals = StopSignals()
            self.close()
            distributed.teardown(self.context)

    def close(self) -> None:
        """Release the run folder (its lock) and the TensorBoard writer; ``run()`` does this at its end."""
        self.folder.unlock()
        if self._tensorboard:
            self._tensorboard.close()
            self._tensorboard = None

    def _train_epoch(self) -> None:
        settings, split = self.settings, self.dataset.splits["train"]
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(settings.seed * 100_003 + self.epoch))
        self._epoch_started = time.perf_counter()
        progress = EpochProgress(settings.progress and self.context.is_main, f"epoch {self.epoch + 1}/{settings.epochs}",
                                 total=len(split), done=min(len(split), self.step_in_epoch * settings.batch_size))
        if (self.frozen and self.transfer.unfreeze_at_epoch is not None
                and self.epoch + 1 >= self.transfer.unfreeze_at_epoch and not self.frozen[0][1].requires_grad):
            for _, parameter in self.frozen:
                parameter.requires_grad_(True)
            if self.context.is_main:
                print(f"epoch {self.epoch + 1}: unfroze {len(self.frozen)} parameter tensors under "
                      f"{', '.join(self.transfer.freeze)}", file=sys.stderr)
        self.model.train()
        self._read_at = self.step_in_epoch
        self._first_bad.zero_()
        for step in range(self.step_in_epoch, self.steps_per_epoch):
            global_rows = order[step * settings.batch_size:(step + 1) * settings.batch_size].numpy()
            rows = global_rows[self.context.rank::self.context.world_size]  # this rank's share
            batch = self._load_batch(split, rows)
            with value_checks(False):  # the batch was checked on the host: the step reads nothing back
                self._step(batch)
            self.step_in_epoch = step + 1
            stopping = not self.context.active and self.signals.received is not None  # one process: at once
            if stopping or self.step_in_epoch % settings.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                means, stop_voted = self._read_losses()
                progress.update(len(global_rows), dict(zip(self.model.tasks, means)))
                stopping = stopping or stop_voted
            else:
                progress.update(len(global_rows))
            if stopping:
                progress.close()
                self._stop_at_boundary(save=True)
        progress.close()

    def _load_batch(self, split: Any, rows: Any) -> Batch:
        """The training batch of ``rows``: its values checked on the host (:func:`check_batch`), then copied
        to the device without waiting (``non_blocking``)."""
        batch = split.batch(rows)
        check_batch(self.model, batch)
        return to_device(batch, self.device, tasks=self.model.tasks)

    def _step(self, batch: Batch) -> None:
        """One optimisation step on a checked batch: forward, losses, backward, optimiser, the weighting's
        after-step. No host synchronisation (tests/test_sync_free.py): the losses and present-counts are
        added to the epoch's sums on the device, and the stop vote (torchrun) stays there until read."""
        settings = self.settings
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            output, losses = self._forward_and_losses(self.model, batch)
            losses = self._global_mean(losses)
        present = self._vote(self.model.labelled_tasks(output, batch.targets, batch.task_masks))
        regularization = self.model.regularization()
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(losses, output, regularization, present)
        distributed.average_gradients(self.model.parameters(), self.context)
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if hasattr(self.model.weighting, "after_step"):  # e.g. FAMO: the losses after the update
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                 enabled=self.device.type == "cuda"):
                _, after_losses = self._forward_and_losses(self.model, batch)
                call_with_present(self.model.weighting.after_step, self._global_mean(after_losses), present)
        with torch.no_grad():  # each task's mean runs over the steps where it had labels; masks replace
            self.epoch_loss_sums += torch.where(present, losses.detach().to(self._sum_dtype), 0.0)
            self.epoch_present_counts += present.to(self._sum_dtype)
            # the step at which each task's loss first became NaN or infinite (0: not yet), for the message
            bad = present & ~torch.isfinite(losses.detach()) & (self._first_bad == 0)
            self._first_bad.masked_fill_(bad, self.step_in_epoch + 1)
            if regularization is not None:
                self.epoch_regularization_sum = self.epoch_regularization_sum + regularization.detach()

    def _read_losses(self) -> tuple[list[float], bool]:
        """The one host read of a logging interval: each task's mean loss so far this epoch, and whether a
        rank asked to stop (torchrun; every rank reads at the same steps, so all agree). Raises
        :class:`NonFiniteLossError` when a task's loss sum is not finite (it became so since the last read)."""
        tasks = len(self.model.tasks)
        host = torch.cat([self.epoch_loss_sums, self.epoch_present_counts, self._first_bad.to(self._sum_dtype),
                          self._stop_votes]).cpu()
        sums, counts, first_bad = host[:tasks], host[tasks:2 * tasks], host[2 * tasks:3 * tasks]
        self._check_finite(sums, first_bad)
        self._read_at = self.step_in_epoch
        return (sums / counts.clamp_min(1)).tolist(), bool(host[3 * tasks:].sum() > 0)

    def _global_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """Losses ``[T]`` whose value is the mean over the ranks and whose gradient is this rank's own.

        Every rank then feeds the weighting the same numbers (its state stays identical), and the
        gradient average across ranks equals the gradient of the global mean.
        """
        if not self.context.active:
            return losses
        mean = distributed.sum_across(losses.detach(), self.context) / self.context.world_size
        return losses + (mean - losses.detach())

    def _vote(self, present: torch.Tensor) -> torch.Tensor:
        """Bool ``[T]``: a task is present in the step when any rank has a labelled sample of it. Under torchrun
        the same all-reduce counts the ranks asked to stop (``_stop_votes``, on the device): every rank reads
        it at the same logging interval, so all stop at the same step boundary. No host sync."""
        if not self.context.active:
            return present
        asked = present.new_full((1,), float(self.signals.received is not None), dtype=torch.float32)
        votes = distributed.sum_across(torch.cat([present.float(), asked]), self.context)
        self._stop_votes = votes[-1:].to(self._sum_dtype)
        return votes[:-1] > 0

    def _stop_at_boundary(self, save: bool) -> None:
        """Save ``last.pt`` at this step boundary (unless the epoch's commit just did) and raise
        :class:`TrainingInterrupted`; every rank calls this at the same step."""
        if save:
            state = self._resume_state()
            if self.context.is_main:
                with self.signals.saving():
                    self.folder.save_step(state)
        number = self.signals.received or signal.SIGTERM  # a rank that got no signal itself stops with the others
        where = (f"epoch {self.epoch + 1}, step {self.step_in_epoch} of {self.steps_per_epoch}"
                 if self.step_in_epoch else f"the end of epoch {self.epoch}")
        raise TrainingInterrupted(number, f"{signal.Signals(number).name}: stopped at {where}; checkpoint "
                                          f"{self.out_dir / 'last.pt'}. Continue with `{self._resume_command()}`")

    def _resume_command(self) -> str:
        """The command that continues this run (with as many processes as it has)."""
        processes = f" --nproc {self.context.world_size}" if self.context.active else ""
        return f"mtmm train{processes} --resume {self.out_dir}"

    def _epoch_means(self) -> torch.Tensor:
        """Each task's mean training loss ``[T]`` (on the device) over the steps of this epoch where it was present."""
        return self.epoch_loss_sums / self.epoch_present_counts.clamp_min(1)

    def _backward(self, losses: torch.Tensor, output: Any, regularization: torch.Tensor | None = None,
                  present: torch.Tensor | None = None) -> None:
        """Backpropagate the weighted task losses plus the architecture's regularization (if any).

        A gradient-level weighting combines the task gradients only; the regularization's
        gradient is then accumulated on top, unweighted.
        """
        weighting = self.model.weighting
        if getattr(weighting, "gradient_level", False):
            weighted_backward(weighting, losses, output.fused, present)
            if regularization is not None and regularization.requires_grad:
                regularization.backward()
        else:
            total = weighted_total(weighting, losses.float(), present)
            if regularization is not None:
                total = total + regularization
            total.backward()

    def _check_finite(self, sums: torch.Tensor, first_bad: torch.Tensor) -> None:
        """Stop on a NaN or infinite task loss. ``sums`` ``[T]``: the epoch's loss sums; ``first_bad`` ``[T]``: the
        step where each task's loss first was not finite (0: never); both CPU copies. The message names the
        first such step and its tasks (the others then follow from that step's NaN update)."""
        failed = [i for i, finite in enumerate(torch.isfinite(sums).tolist()) if not finite]
        if not failed:
            return
        first = min((int(first_bad[i]) for i in failed if first_bad[i] > 0), default=0)
        culprits = [i for i in failed if not first or int(first_bad[i]) == first]
        where = f"step {first}" if first else f"steps {self._read_at + 1} to {self.step_in_epoch}"  # a sum overflowed
        names = lambda indices: ", ".join(repr(self.model.tasks[i]) for i in indices)  # noqa: E731
        later = [i for i in failed if i not in culprits]
        also = f"; by then also task {names(later)}" if later else ""
        raise NonFiniteLossError(
            f"the loss of task {names(culprits)} is not finite at epoch {self.epoch + 1}, {where} of "
            f"{self.steps_per_epoch} (found at step {self.step_in_epoch}: the losses are read every "
            f"train.log_every = {self.settings.log_every} steps{also}); stopping. The last good checkpoint is "
            f"{self.out_dir / 'last.pt'}. Try a lower train.lr or train.grad_clip, and check that task's targets.")

    def _end_epoch(self) -> bool:
        """Validate, log, checkpoint; returns True when early stopping says stop."""
        train_losses = self._epoch_means().tolist()
        weighting = self.model.weighting
        if hasattr(weighting, "end_epoch"):  # e.g. DWA; a task with no labelled sample all epoch is left out
            call_with_present(weighting.end_epoch, torch.tensor(train_losses), self.epoch_present_counts.cpu() > 0)
        validation = evaluate(self.model, self.dataset.splits["validation"], self.device,
                              self.settings.eval_batch_size, context=self.context)
        monitored = validation.get(self.settings.monitor)
        if monitored is None:
            raise ValueError(f"train.monitor {self.settings.monitor!r} is not a validation metric; "
                             f"available: {', '.join(sorted(validation))}")
        self.epoch += 1
        self.step_in_epoch, self.epoch_loss_sums = 0, torch.zeros_like(self.epoch_loss_sums)
        self.epoch_present_counts = torch.zeros_like(self.epoch_present_counts)
        regularization = float(self.epoch_regularization_sum) / max(1, self.steps_per_epoch)
        self.epoch_regularization_sum = 0.0
        improved = is_better(self.settings.monitor, monitored, self.best)
        if improved:
            self.best, self.best_epoch, self.stale_epochs = monitored, self.epoch, 0
        else:
            self.stale_epochs += 1
        record = {
            "epoch": self.epoch,
            "lr": self.scheduler.get_last_lr()[0],
            "train": dict(zip(self.model.tasks, train_losses)),
            "validation": validation,
            "task_weights": dict(zip(self.model.tasks, weighting.weights().tolist())),
            "time": time.time(),
        }
        if hasattr(self.model.architecture, "regularization"):  # e.g. soft_sharing's coupling penalty
            record["regularization"] = regularization
        state = self._resume_state()  # every rank takes part: it gathers their RNG states
        error: RunError | None = None
        if self.context.is_main:
            with self.signals.saving():  # the log line, best.pt and last.pt appear together or not at all
                try:
                    self.folder.commit_epoch(state, record, self.model.state_dict() if improved else None)
                except RunError as caught:
                    error = caught
            if error is None:
                self._log_tensorboard(record)
                print(epoch_summary(self.epoch, self.settings.epochs, record["train"], validation,
                                    self.settings.monitor, improved, time.perf_counter() - self._epoch_started,
                                    terminal_width()), file=sys.stderr)
        if distributed.agree(error is not None, self.context):
            raise error or RunError(f"rank 0 could not write {self.out_dir}; its error says why")
        if distributed.agree(self.signals.received is not None, self.context):
            self._stop_at_boundary(save=False)
        if self.on_epoch_end is not None:
            self.on_epoch_end(record)
        stop = self.settings.patience > 0 and self.stale_epochs >= self.settings.patience
        if stop and self.epoch < self.settings.epochs and self.context.is_main:
            print(f"early stopping after epoch {self.epoch}/{self.settings.epochs}: validation "
                  f"{self.settings.monitor} has not improved for {self.stale_epochs} epochs (train.patience "
                  f"{self.settings.patience}); "
                  + (f"best {self.best:.4g} at epoch {self.best_epoch}, whose weights (best.pt) are tested"
                     if self.best is not None else "it was never a number"), file=sys.stderr)
        return stop

    def _log_tensorboard(self, record: dict[str, Any]) -> None:
        """Mirror an epoch's record to TensorBoard in ``RUN_DIR/tensorboard`` when tensorboard is installed."""
        if self._tensorboard is None:
            writer_class = tensorboard_writer_class()
            if writer_class is None:
                self._tensorboard = False
                return
            self._tensorboard = writer_class(log_dir=str(self.out_dir / "tensorboard"))
        if self._tensorboard is False:
            return
        for section in ("train", "validation", "task_weights"):
            for key, value in record[section].items():
                self._tensorboard.add_scalar(f"{section}/{key}", value, record["epoch"])
        self._tensorboard.add_scalar("lr", record["lr"], record["epoch"])
        if "regularization" in record:
            self._tensorboard.add_scalar("regularization", record["regularization"], record["epoch"])
        self._tensorboard.flush()

    def test(self, modalities: list[str] | None = None, write: bool = True) -> dict[str, float]:
        """Metrics of the best weights on the test split (written to ``test_metrics.json`` when ``write``)."""
        distributed.barrier(self.context)
        if (self.out_dir / "best.pt").is_file():
            self.model.load_state_dict(load_checkpoint(self.out_dir / "best.pt", self.device)["model"])
        metrics = evaluate(self.model, self.dataset.splits["test"], self.device, self.settings.eval_batch_size,
                           modalities, self.context)
        if write and self.context.is_main:
            self.folder.write_text("test_metrics.json", json.dumps(metrics, indent=2))
        return metrics

    # -- checkpoints --------------------------------------------------------------------------------
    def _open_run_folder(self, resume: bool, force: bool) -> None:
        """Rank 0 locks the folder, then starts a new run in it or recovers the one there; every rank
        then restores the checkpoint when resuming. A failure on rank 0 ends every rank."""
        state, error = None, None
        if self.context.is_main and not self.read_only:
            try:
                self.folder.lock()
                if resume:
                    state = self.folder.recover(map_location=self.device)
                    if state is None:
                        raise UsageError(f"{self.out_dir} has no checkpoint to resume (the run stopped before "
                                       "saving one): start it again with `--force`")
                else:
                    self.folder.check_new(force)
                    self.folder.start(yaml.safe_dump(self.config, sort_keys=False),
                                      yaml.safe_dump(self.model_spec, sort_keys=False))
            except BaseException as caught:
                self.folder.unlock()
                if not isinstance(caught, Exception):
                    raise
                error = caught
        if distributed.agree(error is not None, self.context):
            raise error or RunError(f"rank 0 could not open the run folder {self.out_dir}; its error says why")
        if resume:
            self._restore(state if state is not None else
                          load_checkpoint(self.out_dir / "last.pt", map_location=self.device))
            if self.context.is_main and not self.read_only:
                where = (f"epoch {self.epoch + 1}/{self.settings.epochs}, step {self.step_in_epoch}"
                         if self.step_in_epoch else f"the start of epoch {self.epoch + 1}/{self.settings.epochs}")
                print(f"resuming {self.out_dir} at {where}", file=sys.stderr)

    def _resume_state(self) -> dict[str, Any]:
        """Everything ``last.pt`` holds to continue from this step boundary (every rank calls it: it
        gathers each rank's RNG state; only rank 0's copy is written)."""
        rng_states = distributed.gather(torch.get_rng_state(), self.context)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_loss_sums": self.epoch_loss_sums.cpu(),
            "epoch_present_counts": self.epoch_present_counts.cpu(),
            "epoch_regularization_sum": self.epoch_regularization_sum,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            "torch_rng": rng_states,  # one per rank
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.epoch_loss_sums = state["epoch_loss_sums"].to(self.device, self._sum_dtype)
        self.epoch_present_counts = state.get(  # checkpoints before absent tasks were counted: every step counted
            "epoch_present_counts", torch.full_like(self.epoch_loss_sums, float(self.step_in_epoch))
        ).to(self.device, self._sum_dtype)
        self.epoch_regularization_sum = state["epoch_regularization_sum"]
        self.best, self.stale_epochs = state["best"], state["stale_epochs"]
        self.best_epoch = state.get("best_epoch")
        rng_states = state["torch_rng"]
        if self.read_only:  # evaluating: no random draws to continue, any number of processes will do
            return
        if len(rng_states) != self.context.world_size:
            raise ValueError(f"{self.out_dir} was trained by {len(rng_states)} processes; resume it with as many "
                             f"(this run has {self.context.world_size})")
        torch.set_rng_state(rng_states[self.context.rank])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
