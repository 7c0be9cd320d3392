"""Training batches loaded by worker processes (``train.workers``), pinned and prefetched, resuming exactly.

The trainer's data order is a pure function of the run's seed and the epoch: each epoch draws
:func:`epoch_order`, step ``s`` takes the ``s``-th ``train.batch_size`` rows of it and this rank keeps
every ``world_size``-th of those (:func:`step_rows`), so a run under torchrun sees the same global
batches as a single process. :class:`StepBatches` is a ``torch.utils.data.Dataset`` whose item is the
whole batch of one ``(epoch, step)``, and :class:`StepLoader` wraps it in a ``DataLoader``
(``batch_size=None``) that asks for steps ``start .. steps_per_epoch - 1`` in order. Resuming at
``step_in_epoch`` therefore needs no loader state in the checkpoint: the epoch and the step are the
position, and the loader starts there.

Workers do not change the numbers. The items arrive in step order whatever the number of workers,
and each step's ``split.batch(rows)`` runs with the global random generators (torch's CPU one,
NumPy's, Python's) seeded from ``(seed, epoch, step, rank)`` (:func:`step_seed`) and restored afterwards:
a split that draws random augmentations draws the same ones in the training process (``workers: 0``),
in any worker, and after a resume; the training process's own draws (dropout) are left untouched.

A batch that cannot be loaded (a corrupt file) raises :class:`DataLoadError` naming the split, the
epoch, the step, the rows and, when they fail on their own, the rows at fault; a worker that dies
ends the run with the same error instead of a hang. Workers ignore SIGINT (a terminal's Ctrl-C
reaches the whole process group): the training process stops at a step boundary, then ends them.
They exit quietly on SIGTERM (:func:`quiet_worker`).
"""

from __future__ import annotations

import os
import random
import re
import signal
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mtmm_core.contracts import Batch
from mtmm_core.errors import RunError

ROWS_SHOWN = 8  # rows an error message lists before "... N in all"
ROWS_TRIED_ALONE = 256  # rows of a failed batch loaded one by one to find those at fault


class DataLoadError(RunError):
    """A batch of a split could not be loaded; the message names the split, the step and the rows."""


class StepBatch(NamedTuple):
    """The batch of one training step on this rank.

    ``rows``: this rank's rows of the split; ``size``: the step's rows on all ranks together (what the
    progress bar counts); ``batch``: the tensors of ``rows`` (pinned when the loader pins memory).
    """

    epoch: int
    step: int
    rows: np.ndarray
    size: int
    batch: Batch


def epoch_order(length: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled row order ``[length]`` of ``epoch`` (0-based) of a run with ``train.seed`` ``seed``."""
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def step_rows(order: torch.Tensor, step: int, batch_size: int, rank: int = 0,
              world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``step`` on all ranks (``order``'s ``step``-th slice of ``batch_size``) and this ``rank``'s
    share of them (every ``world_size``-th, starting at ``rank``)."""
    global_rows = order[step * batch_size:(step + 1) * batch_size].numpy()
    return global_rows, global_rows[rank::world_size]


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """A 64-bit seed for the random draws made while loading ``step`` of ``epoch`` on ``rank``."""
    high, low = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(2)
    return (int(high) << 32) | int(low)


@contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, NumPy's global one and Python's ``random`` from ``seed``; restore all three
    on exit, so that the caller's own sequence of draws goes on as if nothing had been drawn. The device's
    generators (CUDA's, which ``torch.manual_seed`` would reseed too) are left alone: loading draws on the host."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def rows_text(rows: np.ndarray | list[int], shown: int = ROWS_SHOWN) -> str:
    """``rows`` for a message: ``3, 17, 42`` or ``3, 17, ... (64 in all)``."""
    listed = ", ".join(str(int(row)) for row in list(rows)[:shown])
    return listed + (f", ... ({len(rows)} in all)" if len(rows) > shown else "")


class StepBatches(Dataset):
    """The training batches of one split as a map-style data set: item ``(epoch, step)`` is a :class:`StepBatch`.

    ``split`` has ``len()`` and ``batch(rows) -> Batch``; ``name`` is used in messages. The epoch's order is
    computed once per epoch in each process that loads from it (the training process or a worker).
    """

    def __init__(self, split: Any, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 name: str = "train"):
        self.split, self.name = split, name
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its order)

    def __len__(self) -> int:
        """Steps per epoch: the last one takes the rows left over."""
        return -(-len(self.split) // self.batch_size)

    def rows(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of ``step`` of ``epoch`` on all ranks, and this rank's share (:func:`step_rows`)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.split), self.seed, epoch))
        return step_rows(self._order[1], step, self.batch_size, self.rank, self.world_size)

    def __getitem__(self, index: tuple[int, int]) -> StepBatch:
        """The batch of ``(epoch, step)``, loaded with the step's own random draws (:func:`seeded_draws`)."""
        epoch, step = index
        global_rows, rows = self.rows(epoch, step)
        try:
            with seeded_draws(step_seed(self.seed, epoch, step, self.rank)):
                batch = self.split.batch(rows)
        except Exception as error:  # not KeyboardInterrupt: that stops the run as it is
            raise DataLoadError(self.failure(epoch, step, rows, error)) from error
        return StepBatch(epoch, step, rows, len(global_rows), batch)

    def failure(self, epoch: int, step: int, rows: np.ndarray, error: BaseException) -> str:
        """The message of a batch that failed to load with ``error``: the split, the step, the rows, and
        the rows that fail on their own (of the first :data:`ROWS_TRIED_ALONE`) when there are any."""
        at_fault = []
        for row in rows[:ROWS_TRIED_ALONE]:
            try:
                with seeded_draws(step_seed(self.seed, epoch, step, self.rank)):
                    self.split.batch(np.asarray([row]))
            except Exception:
                at_fault.append(int(row))
        alone = ""
        if len(at_fault) == 1:
            alone = f"; row {at_fault[0]} fails on its own"
        elif at_fault:
            alone = f"; rows {rows_text(at_fault)} fail on their own"
        return (f"split {self.name!r}: cannot load the batch of epoch {epoch + 1}, step {step + 1} "
                f"(rows {rows_text(rows)}{f', rank {self.rank}' if self.world_size > 1 else ''}): "
                f"{type(error).__name__}: {error}{alone}")


class StepSampler(Sampler):
    """Yields ``(epoch, step)`` for steps ``start .. steps - 1`` of the epoch set by :meth:`set_epoch`."""

    def __init__(self, steps: int):
        self.steps, self.epoch, self.start = steps, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` from step ``start`` on (a resumed epoch starts where it stopped)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, step) for step in range(self.start, self.steps))

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def keep_item(item: StepBatch) -> StepBatch:
    """The loader's ``collate_fn``: an item is already a whole batch (the default would turn ``rows`` into a tensor)."""
    return item


def quiet_worker(worker_id: int) -> None:
    """A worker's ``worker_init_fn``: ignore SIGINT, which a terminal's Ctrl-C sends to the whole process group (the
    training process decides when to stop, at a step boundary, and then ends its workers), and exit quietly (status
    0) on SIGTERM. A worker killed by a signal makes torch raise an error in the training process wherever it is
    (mid-step, or while it saves the checkpoint); one that ignored SIGTERM would hang the training process's exit,
    which ends its workers with SIGTERM and waits for them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(number: int, frame: Any) -> None:
    """A worker's SIGTERM handler: end the process at once with status 0 (torch reports no failed worker)."""
    os._exit(0)


class StepLoader:
    """This rank's training batches of ``split``, one :class:`StepBatch` per step, from ``workers`` processes.

    ``workers`` 0 loads each batch in the calling process when it is asked for; ``workers`` > 0 start that
    many processes once (``persistent_workers``: they serve every epoch), each loading up to ``prefetch``
    batches ahead. Memory is pinned when ``device`` is CUDA, so the trainer's ``non_blocking`` copy overlaps
    the step. The batches and their order are the same for every number of workers (module docstring).
    """

    def __init__(self, split: Any, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 workers: int = 0, prefetch: int = 2, device: torch.device | str = "cpu", name: str = "train"):
        if workers < 0 or prefetch < 1:
            raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}")
        self.dataset = StepBatches(split, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                                   name=name)
        self.sampler = StepSampler(len(self.dataset))
        self.workers = workers
        self.loader = DataLoader(
            self.dataset, batch_size=None, sampler=self.sampler, collate_fn=keep_item, num_workers=workers,
            pin_memory=torch.device(device).type == "cuda", prefetch_factor=prefetch if workers else None,
            persistent_workers=workers > 0, worker_init_fn=quiet_worker if workers else None,
            # the loader's base seed comes from here, not from the training process's generator (dropout)
            generator=torch.Generator().manual_seed(seed))

    @property
    def pin_memory(self) -> bool:
        """Whether batches are copied to pinned (page-locked) memory: only for a CUDA device."""
        return self.loader.pin_memory

    @property
    def steps(self) -> int:
        """Steps per epoch."""
        return len(self.dataset)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[StepBatch]:
        """The batches of steps ``start .. steps - 1`` of ``epoch``, in step order. A worker's failure raises
        :class:`DataLoadError` naming the split, the step and its rows."""
        self.sampler.set_epoch(epoch, start)
        iterator = iter(self.loader)
        for step in range(start, self.steps):
            try:
                item = next(iterator)
            except DataLoadError as error:
                if not self.workers:
                    raise  # raised in this process: its message and traceback are already the batch's
                raise DataLoadError(worker_message(error)) from error
            except StopIteration:
                raise RunError(f"split {self.dataset.name!r}: the loader ended before step {step + 1} of epoch "
                               f"{epoch + 1}") from None
            except Exception as error:  # a worker that died (killed, out of memory) or another loader failure
                _, rows = self.dataset.rows(epoch, step)
                raise DataLoadError(
                    f"split {self.dataset.name!r}: a loader worker failed while loading the batch of epoch "
                    f"{epoch + 1}, step {step + 1} (rows {rows_text(rows)}): {type(error).__name__}: {error}"
                ) from error
            yield item

    def close(self) -> None:
        """End the worker processes (they also end with the training process)."""
        iterator, self.loader._iterator = self.loader._iterator, None  # the DataLoader's iterator owns the workers
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def worker_message(error: BaseException) -> str:
    """The message a worker's :class:`DataLoadError` had: torch re-raises it in the training process with
    ``Caught DataLoadError in DataLoader worker process N`` and the worker's traceback as its text."""
    text = str(error).rstrip()
    worker = re.match(r"Caught \w+ in DataLoader (worker process \d+)", text)
    raised = list(re.finditer(r"^(?:[\w.]+\.)?DataLoadError: ", text, re.MULTILINE))
    message = text[raised[-1].end():] if raised else text
    return f"{message} (in loader {worker.group(1)})" if worker else message
