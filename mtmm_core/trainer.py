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

Under torchrun, ``train.strategy`` wraps the model in DDP or shards it with FSDP2, and ``train.precision``
and ``train.grad_accumulation`` shape each step (:mod:`mtmm_core.strategy`, :mod:`mtmm_core.precision`,
docs/distributed.md).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml

from mtmm_core import distributed
from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.config import ConfigWarning, TrainSettings
from mtmm_core.data import complete_model_spec, load_dataset
from mtmm_core.data_fit import require_model_fit
from mtmm_core.databuild.rows import save_run_preprocessing
from mtmm_core.errors import RunError, SpecError, UsageError
from mtmm_core.contracts import Batch
from mtmm_core.evaluation import check_batch, evaluate, is_better, to_device
from mtmm_core.interrupts import StopSignals, TrainingInterrupted
from mtmm_core.loader import StepBatch, StepLoader
from mtmm_core.model import ModelOutput, MultimodalMultitaskModel, value_checks
from mtmm_core.progress import EpochProgress, epoch_summary, run_header, terminal_width
from mtmm_core.resume import restore, resume_state
from mtmm_core.run_folder import RunFolder
from mtmm_core.run_setup import (TensorBoardLog, choose_device, cpu_threads, seed_everything,  # noqa: F401
                                 tensorboard_writer_class, warmup_cosine)
from mtmm_core.spec import build_model
from mtmm_core.transfer import freeze, load_weights, parameter_groups, transfer_settings
from mtmm_core.precision import Precision
from mtmm_core.strategy import Strategy, split_batch
from mtmm_core.weighting import call_with_present, is_gradient_level, weighted_backward, weighted_total


class NonFiniteLossError(RunError, FloatingPointError):
    """A task's loss became NaN or infinite; the last good checkpoint is kept."""


def forward_and_losses(model: MultimodalMultitaskModel, batch: Batch,
                       network: torch.nn.Module | None = None) -> tuple[ModelOutput, torch.Tensor]:
    """The model's output on ``batch`` and its per-task losses ``[T]``: what ``train.compile`` compiles.
    ``network`` runs the forward pass when given (the model wrapped in DDP; FSDP2 shards it in place)."""
    output = (network or model)(batch.inputs, batch.lengths, batch.present)
    return output, model.task_losses(output, batch.targets, batch.task_masks)


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
        # train.precision (autocast, fp16's GradScaler) and train.strategy (DDP or FSDP2 under torchrun; nothing
        # for one process): self.strategy.network is what the forward pass calls.
        self.precision = Precision(self.settings.precision, self.device, is_gradient_level(self.model.weighting))
        self.strategy = Strategy(self.settings.strategy, self.model, self.context, self.device, self.precision)
        current = dict(self.model.named_parameters())  # FSDP2 replaced them with sharded ones
        self.frozen = [(name, current[name]) for name, _ in self.frozen]
        # transfer.layer_decay: lower rates for a pretrained backbone's early layers (one group otherwise)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, self.transfer, self.settings.lr),
                                           lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        train_rows = len(self.dataset.splits["train"])
        if self.settings.batch_size > train_rows and self.context.is_main and not read_only:
            warnings.warn(f"train.batch_size {self.settings.batch_size} is larger than the training split "
                          f"({train_rows} samples); each step uses the whole split", ConfigWarning, stacklevel=2)
        self.steps_per_epoch = math.ceil(train_rows / self.settings.batch_size)
        smallest = (train_rows - 1) % self.settings.batch_size + 1  # the rows of the epoch's last step
        if smallest // self.context.world_size < self.settings.grad_accumulation and not read_only:
            raise SpecError("train.grad_accumulation", f"{self.settings.grad_accumulation} micro-batches need as many "
                            f"rows on each of the {self.context.world_size} process(es) in every step, and the "
                            f"epoch's last step has {smallest} rows ({train_rows} samples in steps of "
                            f"train.batch_size {self.settings.batch_size}); lower it or change train.batch_size")
        total_steps = self.steps_per_epoch * self.settings.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total_steps, self.settings.warmup_fraction))
        self.epoch, self.step_in_epoch, self.best, self.stale_epochs = 0, 0, None, 0
        self.best_epoch: int | None = None
        self._epoch_started = time.perf_counter()
        self._tensorboard = TensorBoardLog(self.out_dir / "tensorboard", tensorboard_writer_class)
        # The epoch's per-task loss sums and present-counts stay on the device (float64 where it has it),
        # updated by every step and read every train.log_every steps; last.pt holds a CPU copy.
        self._sum_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.epoch_loss_sums = torch.zeros(len(self.model.tasks), dtype=self._sum_dtype, device=self.device)
        self.epoch_present_counts = torch.zeros_like(self.epoch_loss_sums)
        self.epoch_regularization_sum: float | torch.Tensor = 0.0  # of the architecture's regularization(), if any
        self._stop_votes = torch.zeros(1, dtype=self._sum_dtype, device=self.device)  # ranks asked to stop (torchrun)
        self._first_bad = torch.zeros(len(self.model.tasks), dtype=torch.long, device=self.device)  # see _step
        self._read_at = 0  # the step_in_epoch of the last read of the losses
        self._loader: StepLoader | None = None  # the training batches' loader (train.workers), made on first use
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
        self._tensorboard.close()
        if self._loader is not None:  # the training batches' worker processes
            self._loader.close()
            self._loader = None

    def _train_epoch(self) -> None:
        settings, split = self.settings, self.dataset.splits["train"]
        self._epoch_started = time.perf_counter()
        progress = EpochProgress(settings.progress and self.context.is_main, f"epoch {self.epoch + 1}/{settings.epochs}",
                                 total=len(split), done=min(len(split), self.step_in_epoch * settings.batch_size))
        if (self.frozen and self.transfer.unfreeze_at_epoch is not None
                and self.epoch + 1 >= self.transfer.unfreeze_at_epoch and not self.frozen[0][1].requires_grad):
            for _, parameter in self.frozen:
                parameter.requires_grad_(True)
            self.strategy.rewrap()  # DDP fixes the parameters it reduces when it is built
            if self.context.is_main:
                print(f"epoch {self.epoch + 1}: unfroze {len(self.frozen)} parameter tensors under "
                      f"{', '.join(self.transfer.freeze)}", file=sys.stderr)
        self.model.train()
        self._read_at = self.step_in_epoch
        self._first_bad.zero_()
        for loaded in self._train_batches(split):  # steps step_in_epoch.. of the epoch, this rank's rows
            batch = self._load_batch(loaded)
            with value_checks(False):  # the batch was checked on the host: the step reads nothing back
                self._step(batch)
            self.step_in_epoch = loaded.step + 1
            stopping = not self.context.active and self.signals.received is not None  # one process: at once
            if stopping or self.step_in_epoch % settings.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                means, stop_voted = self._read_losses()
                progress.update(loaded.size, dict(zip(self.model.tasks, means)))
                stopping = stopping or stop_voted
            else:
                progress.update(loaded.size)
            if stopping:
                progress.close()
                self._stop_at_boundary(save=True)
        progress.close()

    def _train_batches(self, split: Any) -> Iterator[StepBatch]:
        """This rank's batches of the epoch from ``step_in_epoch`` on, in step order: step ``s`` takes the ``s``-th
        ``train.batch_size`` rows of the epoch's shuffled order, this rank every ``world_size``-th of them.
        ``train.workers`` processes load them ahead (:mod:`mtmm_core.loader`); they serve every epoch."""
        if self._loader is None:
            self._loader = StepLoader(split, batch_size=self.settings.batch_size, seed=self.settings.seed,
                                      rank=self.context.rank, world_size=self.context.world_size,
                                      workers=self.settings.workers, prefetch=self.settings.prefetch,
                                      device=self.device)
        return self._loader.epoch(self.epoch, start=self.step_in_epoch)

    def _load_batch(self, loaded: StepBatch) -> Batch:
        """A loaded training batch, its values checked on the host (:func:`check_batch`; in this process, where
        the model is, not in a loader worker), then copied to the device without waiting (``non_blocking``)."""
        check_batch(self.model, loaded.batch)
        return to_device(loaded.batch, self.device, tasks=self.model.tasks)

    def _step(self, batch: Batch) -> None:
        """One optimisation step on a checked batch: forward, losses, backward, optimiser, the weighting's
        after-step. No host synchronisation (tests/test_sync_free.py): the losses and present-counts are
        added to the epoch's sums on the device, and the stop vote (torchrun) stays there until read."""
        settings, strategy, precision = self.settings, self.strategy, self.precision
        parts = split_batch(batch, settings.grad_accumulation)  # [(micro-batch, its share of the rows)]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = count = regularization = None
        for index, (part, share) in enumerate(parts):
            with strategy.sync_gradients(index == len(parts) - 1):  # reduce across ranks on the last one only
                with precision.autocast():
                    output, losses = self._forward_and_losses(self.model, part, strategy.network)
                    losses = self._global_mean(losses)
                present = self._vote(self.model.labelled_tasks(output, part.targets, part.task_masks))
                regularization = self.model.regularization()
                self._backward(losses, output, regularization, present, share)
            with torch.no_grad():  # per task: the sum of its micro-batch losses where present, and their count
                kept = torch.where(present, losses.detach().to(self._sum_dtype), 0.0)
                loss_sum = kept if loss_sum is None else loss_sum + kept
                count = present.to(self._sum_dtype) if count is None else count + present.to(self._sum_dtype)
        if len(parts) > 1 and is_gradient_level(self.model.weighting):  # each micro-batch added a whole gradient
            for parameter in self.model.parameters():
                if parameter.grad is not None:
                    parameter.grad.mul_(1.0 / len(parts))
        strategy.after_backward()  # the weighting's own parameters, which DDP and FSDP leave out
        if settings.grad_clip > 0:
            precision.unscale(self.optimizer)
            strategy.clip_gradients(settings.grad_clip)
        precision.step(self.optimizer)
        self.scheduler.step()
        present = count > 0
        step_losses = loss_sum / count.clamp_min(1)
        if hasattr(self.model.weighting, "after_step"):  # e.g. FAMO: the losses after the update
            with torch.no_grad(), precision.autocast():
                after = [self._global_mean(self._forward_and_losses(self.model, part)[1]) for part, _ in parts]
                after_losses = after[0] if len(parts) == 1 else sum(a * share for a, (_, share) in zip(after, parts))
                call_with_present(self.model.weighting.after_step, after_losses, present)
        with torch.no_grad():  # each task's mean runs over the steps where it had labels; masks replace
            self.epoch_loss_sums += torch.where(present, step_losses, 0.0)
            self.epoch_present_counts += present.to(self._sum_dtype)
            # the step at which each task's loss first became NaN or infinite (0: not yet), for the message
            bad = present & ~torch.isfinite(step_losses) & (self._first_bad == 0)
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
            state = resume_state(self)
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
                  present: torch.Tensor | None = None, share: float = 1.0) -> None:
        """Backpropagate the weighted task losses plus the architecture's regularization (if any).

        A gradient-level weighting combines the task gradients only; the regularization's
        gradient is then accumulated on top, unweighted (under DDP that second backward adds to the
        reduced gradients without a reduction of its own: the regularization is the same on every rank).
        ``share``: this micro-batch's share of the step's rows (``train.grad_accumulation``), which scales
        a loss-level total; fp16 scales it by the GradScaler's factor too.
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
            if share != 1.0:
                total = total * share
            self.precision.scale(total).backward()

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
        state = resume_state(self)  # every rank takes part: it gathers their RNG states (and writes its shard)
        best_model = self.strategy.full_model_state() if improved else None  # FSDP: gathered on rank 0
        error: RunError | None = None
        if self.context.is_main:
            with self.signals.saving():  # the log line, best.pt and last.pt appear together or not at all
                try:
                    self.folder.commit_epoch(state, record, best_model)
                except RunError as caught:
                    error = caught
            if error is None:
                self._tensorboard.log(record)
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

    def test(self, modalities: list[str] | None = None, write: bool = True) -> dict[str, float]:
        """Metrics of the best weights on the test split (written to ``test_metrics.json`` when ``write``)."""
        distributed.barrier(self.context)
        if (self.out_dir / "best.pt").is_file():
            self.strategy.load_full_model_state(load_checkpoint(self.out_dir / "best.pt", self.device)["model"])
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
                    save_run_preprocessing(self.dataset, self.out_dir)  # a table's (docs/tables.md), or none
            except BaseException as caught:
                self.folder.unlock()
                if not isinstance(caught, Exception):
                    raise
                error = caught
        if distributed.agree(error is not None, self.context):
            raise error or RunError(f"rank 0 could not open the run folder {self.out_dir}; its error says why")
        if resume:
            restore(self, state if state is not None else
                          load_checkpoint(self.out_dir / "last.pt", map_location=self.device))
            if self.context.is_main and not self.read_only:
                where = (f"epoch {self.epoch + 1}/{self.settings.epochs}, step {self.step_in_epoch}"
                         if self.step_in_epoch else f"the start of epoch {self.epoch + 1}/{self.settings.epochs}")
                print(f"resuming {self.out_dir} at {where}", file=sys.stderr)
