"""The training loader (mtmm_core/loader.py): the same batches with and without workers, from any step, per rank;
clear errors instead of hangs; an interrupted run with workers resumes to the weights of a run without."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.config import load_config
from mtmm_core.errors import SpecError
from mtmm_core.interrupts import TrainingInterrupted
from mtmm_core.loader import DataLoadError, StepLoader, epoch_order
from mtmm_core.trainer import Trainer
from small_data import SmallAVDigits, small_config

ROWS, BATCH, SEED = 200, 32, 7  # 7 steps, the last of 8 rows
STEPS = -(-ROWS // BATCH)


def bench_loader():
    """benchmarks/bench_loader.py as a module (its PNG data set is the image-file data set of these tests)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_loader.py"
    spec = importlib.util.spec_from_file_location("bench_loader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def split():
    return SmallAVDigits(train_rows=ROWS).splits["train"]


@contextmanager
def deadline(seconds: float):
    """Fail (TimeoutError) instead of hanging when the block takes longer than ``seconds``."""

    def expire(number, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def same_batch(a, b) -> bool:
    """Bitwise equality of two Batches' tensors (inputs, lengths, targets)."""
    parts = [(a.inputs, b.inputs), (a.lengths, b.lengths), (a.targets, b.targets)]
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in parts)


def load_all(split, workers: int, epoch: int, start: int = 0, **kwargs) -> list:
    loader = StepLoader(split, batch_size=BATCH, seed=SEED, workers=workers, **kwargs)
    try:
        with deadline(120):
            return list(loader.epoch(epoch, start))
    finally:
        loader.close()


@pytest.mark.parametrize("start", [0, 4])
def test_two_workers_give_bitwise_the_batches_of_none_for_every_step_from_any_start(split, start):
    without, with_two = load_all(split, 0, epoch=1, start=start), load_all(split, 2, epoch=1, start=start)
    assert [item.step for item in without] == [item.step for item in with_two] == list(range(start, STEPS))
    # the trainer's order before the loader: randperm seeded with seed * 100_003 + epoch, sliced by step
    order = torch.randperm(ROWS, generator=torch.Generator().manual_seed(SEED * 100_003 + 1)).numpy()
    for a, b in zip(without, with_two):
        assert np.array_equal(a.rows, order[a.step * BATCH:(a.step + 1) * BATCH]) and np.array_equal(a.rows, b.rows)
        assert a.size == b.size == len(a.rows) and same_batch(a.batch, b.batch)
        assert same_batch(a.batch, split.batch(a.rows))
    assert without[-1].size == ROWS - (STEPS - 1) * BATCH
    other_epoch = load_all(split, 0, epoch=2, start=start)
    assert not np.array_equal(other_epoch[0].rows, without[0].rows)


def test_each_rank_gets_every_world_size_th_row_of_the_step(split):
    world = 3
    ranks = [load_all(split, 2 if rank == 1 else 0, epoch=0, rank=rank, world_size=world) for rank in range(world)]
    order = epoch_order(ROWS, SEED, 0).numpy()
    for step in range(STEPS):
        global_rows = order[step * BATCH:(step + 1) * BATCH]
        for rank in range(world):
            item = ranks[rank][step]
            assert np.array_equal(item.rows, global_rows[rank::world]) and item.size == len(global_rows)
            assert same_batch(item.batch, split.batch(global_rows[rank::world]))
    seen = np.concatenate([item.rows for shard in ranks for item in shard])
    assert np.array_equal(np.sort(seen), np.arange(ROWS))  # every row once per epoch, across the ranks


class Augmented:
    """A split that draws a random augmentation from torch's and NumPy's global generators."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def batch(self, rows):
        batch = self.split.batch(rows)
        image = batch.inputs["image"]
        noise = torch.rand(image.shape) + float(np.random.rand())
        return batch._replace(inputs={**batch.inputs, "image": image + noise})


def test_random_draws_in_a_split_are_the_same_in_workers_and_leave_the_training_rng_alone(split, monkeypatch):
    torch.manual_seed(123)
    before, reseeded = torch.get_rng_state(), []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    without = load_all(Augmented(split), 0, epoch=0, start=2)
    assert torch.equal(torch.get_rng_state(), before)  # dropout draws go on as if nothing had been loaded
    assert not reseeded  # nor are the GPU's generators reseeded (the training process's, with workers 0)
    with_two = load_all(Augmented(split), 2, epoch=0, start=2)
    resumed = load_all(Augmented(split), 2, epoch=0, start=5)
    assert all(same_batch(a.batch, b.batch) for a, b in zip(without, with_two))
    assert same_batch(without[3].batch, resumed[0].batch)  # step 5 draws the same after a resume
    noise = [item.batch.inputs["image"] - split.batch(item.rows).inputs["image"] for item in without[:2]]
    assert not torch.equal(noise[0], noise[1])  # each step draws its own


def test_memory_is_pinned_only_for_a_cuda_device(split):
    assert not StepLoader(split, batch_size=BATCH, seed=0, device="cpu").pin_memory
    assert not StepLoader(split, batch_size=BATCH, seed=0, workers=2, device=torch.device("cpu")).pin_memory
    assert StepLoader(split, batch_size=BATCH, seed=0, device="cuda").pin_memory  # not iterated: no GPU needed
    assert StepLoader(split, batch_size=BATCH, seed=0, device=torch.device("cuda", 0)).pin_memory


@pytest.fixture(scope="module")
def png_split(tmp_path_factory):
    """The first 40 training rows of avdigits with their images read from PNG files; one row of step 3 (epoch 0,
    seed 0, batches of 8) has a corrupt file (so may other rows showing the same image)."""
    from mtmm_plugins.datasets.avdigits import AVDigits

    bench = bench_loader()
    data = AVDigits()
    base = data.splits["train"]
    folder = tmp_path_factory.mktemp("png")
    bench.write_pngs(folder, data.images, 16, indices=base.image_index[:40])
    corrupt = base.image_index[int(epoch_order(40, 0, 0)[17])]
    (folder / f"{int(corrupt):05d}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    class FirstRows(bench.PngSplit):
        def __len__(self):
            return 40

    return FirstRows(base, folder), np.flatnonzero(base.image_index[:40] == corrupt)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_is_an_error_naming_the_split_the_step_and_the_rows(png_split, workers):
    split, bad_rows = png_split
    loader = StepLoader(split, batch_size=8, seed=0, workers=workers)
    order = epoch_order(40, 0, 0).numpy()
    bad_step = int(np.flatnonzero(np.isin(order, bad_rows))[0]) // 8
    loaded = []
    try:
        with deadline(60), pytest.raises(DataLoadError) as raised:
            for item in loader.epoch(0):
                loaded.append(item.step)
    finally:
        loader.close()
    message = str(raised.value)
    assert bad_step > 0 and loaded == list(range(bad_step))  # every batch before the broken one arrived
    assert message.startswith(f"split 'train': cannot load the batch of epoch 1, step {bad_step + 1} (rows ")
    assert re.search(r"\): \w*Error: ", message) and f"{bad_rows[0]}" in message  # Pillow's error, its type
    assert ("fails on its own" if len(bad_rows) == 1 else "fail on their own") in message
    assert ("(in loader worker process" in message) == (workers > 0)


class DiesInAWorker:
    """A split whose worker process exits (as if killed) when asked for the rows of one step."""

    def __init__(self, split, fatal_rows):
        self.split, self.fatal_rows = split, set(int(row) for row in fatal_rows)

    def __len__(self):
        return len(self.split)

    def batch(self, rows):
        if self.fatal_rows & set(int(row) for row in rows) and torch.utils.data.get_worker_info() is not None:
            os._exit(3)
        return self.split.batch(rows)


def test_a_worker_that_dies_is_an_error_naming_the_split_not_a_hang(split):
    fatal = epoch_order(ROWS, SEED, 0).numpy()[2 * BATCH:3 * BATCH]  # step 3's rows
    loader = StepLoader(DiesInAWorker(split, fatal), batch_size=BATCH, seed=SEED, workers=2)
    try:
        with deadline(60), pytest.raises(DataLoadError, match=r"split 'train': a loader worker failed") as raised:
            for _ in loader.epoch(0):
                pass
    finally:
        loader.close()
    assert "exited unexpectedly" in str(raised.value) or "killed" in str(raised.value)


def test_workers_ignore_sigint_and_close_ends_them(split):
    loader = StepLoader(split, batch_size=BATCH, seed=SEED, workers=2)
    batches = loader.epoch(0)
    with deadline(60):
        first = [next(batches), next(batches)]  # one from each worker: both are past their start
        workers = list(loader.loader._iterator._workers)  # a terminal's Ctrl-C reaches the whole process group
        for worker in workers:
            os.kill(worker.pid, signal.SIGINT)
        rest = list(batches)
    assert [item.step for item in [*first, *rest]] == list(range(STEPS))
    assert all(worker.is_alive() for worker in workers)  # persistent: they serve the next epoch too
    assert [item.step for item in loader.epoch(1, start=5)] == [5, 6]
    loader.close()
    for worker in workers:
        worker.join(timeout=10)
    assert not any(worker.is_alive() for worker in workers)


def test_a_process_ends_at_once_while_its_workers_still_run():
    """Python's exit ends live workers with SIGTERM and waits for them: they must not ignore it."""
    code = ("from small_data import SmallAVDigits\nfrom mtmm_core.loader import StepLoader\n"
            "loader = StepLoader(SmallAVDigits(train_rows=200).splits['train'], batch_size=32, seed=0, workers=2)\n"
            "batches = loader.epoch(0)\nnext(batches)\nnext(batches)\nprint('leaving')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "leaving", done.stderr


# 4 steps per epoch, 2 epochs; modality dropout draws from the RNG; famo keeps state and has an after_step.
RESUME = ("train.epochs=2", "data.train_rows=128", "train.batch_size=32", "model.modality_dropout=0.3",
          "model.weighting.name=famo", "train.device=cpu", "train.threads=1")


def test_a_run_stopped_mid_epoch_with_workers_resumes_to_the_weights_of_a_run_without(small_data, tmp_path,
                                                                                      monkeypatch):
    straight = Trainer(small_config(*RESUME, "train.workers=0"), tmp_path / "straight").run()
    weights = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]

    out = tmp_path / "stopped"
    trainer = Trainer(small_config(*RESUME, "train.workers=2"), out)
    original, calls = trainer.model.forward, {"n": 0}

    def forward(*args, **kwargs):  # famo runs two forwards a step: call 5 is step 3's, in epoch 1
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", forward)
    with deadline(300), pytest.raises(TrainingInterrupted):
        trainer.run()
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)  # the resumed run's loader starts at step 3
    with deadline(300):
        resumed = Trainer(small_config(*RESUME, "train.workers=2"), out, resume=True).run()
    assert resumed == straight  # bit-identical floats
    final = load_checkpoint(out / "last.pt")["model"]
    assert all(torch.equal(final[key], weights[key]) for key in weights)


@pytest.mark.parametrize("override, problem", [
    ("train.workers=-1", "train.workers: must be >= 0"),
    ("train.workers=1.5", "train.workers: expected int, got float 1.5"),
    ("train.workers=true", "train.workers: expected int, got bool"),
    ("train.prefetch=0", "train.prefetch: must be >= 1"),
])
def test_train_workers_and_prefetch_must_be_in_range(override, problem):
    with pytest.raises(SpecError, match=problem):
        load_config(None, [override])
    assert load_config(None, ["train.workers=2"])["train"]["workers"] == 2
    assert load_config(None)["train"]["workers"] == 0


def test_the_benchmark_png_split_decodes_what_was_written(tmp_path):
    from mtmm_plugins.datasets.avdigits import AVDigits

    bench = bench_loader()
    data = AVDigits()
    base = data.splits["train"]
    bench.write_pngs(tmp_path, data.images, 32, indices=base.image_index[:4])
    started = time.perf_counter()
    batch = bench.PngSplit(base, tmp_path).batch(np.arange(4))
    assert time.perf_counter() - started < 30
    assert batch.inputs["image"].shape == (4, 1, 8, 8) and batch.inputs["image"].dtype == torch.float32
    # upscaled (bicubic) then box-filtered back: a blurred copy of the original digits
    difference = (batch.inputs["image"] - base.batch(np.arange(4)).inputs["image"]).abs()
    assert difference.mean() < 0.1 and difference.max() < 0.6
