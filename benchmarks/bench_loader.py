"""Samples/s of the training loader with 0 and 2 workers on an image-file data set, and the time per training step.

    python benchmarks/bench_loader.py                          # 224x224 PNGs, workers 0 and 2, 3 reps
    python benchmarks/bench_loader.py --size 128 --workers 0,1,2,4 --reps 5

The data set is avdigits with its images written as PNG files (each 8x8 digit upscaled to
``--size`` x ``--size`` RGB with Pillow, bicubic) into a temporary folder: :class:`PngSplit` decodes
each row's file with Pillow, to grey and back to 8x8 (``BOX``), the work an image-file data set
does per row; the audio and the targets come from avdigits' arrays. Two measurements, each with
every worker count, interleaved over ``--reps`` repetitions (medians reported):

- ``load``: iterating one epoch of the training split with :class:`mtmm_core.loader.StepLoader`
  (``--batch-size`` rows a step), nothing else: samples/s. ``cold`` is the first epoch (it
  starts the workers), ``warm`` a later one (persistent workers).
- ``train``: ``Trainer._train_epoch`` of a small model (the tests' ``SMALL_MODEL``) on the same
  data set: milliseconds per step and samples/s of the whole loop (load, host check, step), and
  the training process's own CPU time per step (``time.process_time``: the decoding that workers
  take off it).

The training process runs torch with ``--threads`` threads (default 1); every worker runs torch
with one (the DataLoader's default). The machine's CPU count, the cores this process may use and
the load average are recorded: on a busy machine the workers share the cores with other processes.
Writes JSON to ``benchmarks/results/loader_cpu_<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtmm_core

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SMALL_MODEL = ["model.dim=32", "model.encoders.image.channels=[16, 32]", "model.encoders.audio.depth=1"]


def write_pngs(folder: Path, images: np.ndarray, size: int, indices: Any = None) -> list[Path]:
    """Write ``images[i]`` (``[1, 8, 8]``, values in ``[0, 1]``) for each ``i`` of ``indices`` (default: all) as a
    ``size`` x ``size`` RGB PNG file ``folder/{i:05d}.png``; returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(images)) if indices is None else sorted({int(i) for i in indices}):
        grey = Image.fromarray(np.round(images[index][0] * 255).astype(np.uint8))
        path = folder / f"{index:05d}.png"
        grey.resize((size, size), Image.BICUBIC).convert("RGB").save(path)
        paths.append(path)
    return paths


def decode_png(path: Path) -> np.ndarray:
    """One PNG file as a float32 ``[1, 8, 8]`` grey image in ``[0, 1]``."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("L").resize((8, 8), Image.BOX)
    return (np.asarray(small, dtype=np.float32) / 255.0)[None]


class PngSplit:
    """A split of avdigits whose images are read from PNG files, one file per row, when a batch is asked for."""

    def __init__(self, base: Any, folder: Path):
        self.base, self.folder = base, Path(folder)

    def __len__(self) -> int:
        return len(self.base)

    def batch(self, rows: np.ndarray | list[int]) -> Any:
        """avdigits' batch of ``rows`` with its images decoded from their files."""
        rows = np.asarray(rows, dtype=np.int64)
        batch = self.base.batch(rows)
        images = np.stack([decode_png(self.folder / f"{int(index):05d}.png")
                           for index in self.base.image_index[rows]])
        return batch._replace(inputs={**batch.inputs, "image": torch.from_numpy(images)})


class PngDigits:
    """avdigits with every split's images read from PNG files in ``root`` (written there when missing)."""

    def __init__(self, *, root: str, size: int = 224, seed: int = 0):
        from mtmm_plugins.datasets.avdigits import AVDigits

        full = AVDigits(seed=seed)
        self.modalities, self.tasks = full.modalities, full.tasks
        folder = Path(root)
        if not (folder / f"{len(full.images) - 1:05d}.png").is_file():
            write_pngs(folder, full.images, size)
        self.splits = {name: PngSplit(split, folder) for name, split in full.splits.items()}


class PngDigitsPlugin:
    """Registers :class:`PngDigits` as the data set ``png_avdigits``."""

    @mtmm_core.hookimpl
    def register_datasets(self, register: Any) -> None:
        register("png_avdigits", PngDigits)


def time_loading(split: Any, workers: int, batch_size: int, epochs: int = 2) -> list[float]:
    """Seconds to iterate each of ``epochs`` epochs of ``split`` with a fresh :class:`StepLoader`
    (the first starts the workers)."""
    from mtmm_core.loader import StepLoader

    loader = StepLoader(split, batch_size=batch_size, seed=0, workers=workers)
    times = []
    try:
        for epoch in range(epochs):
            started = time.perf_counter()
            for _ in loader.epoch(epoch):
                pass
            times.append(time.perf_counter() - started)
    finally:
        loader.close()
    return times


def time_training(root: Path, size: int, workers: int, batch_size: int, threads: int, out: Path) -> dict[str, float]:
    """Seconds per step of ``Trainer._train_epoch`` (a small model, the PNG data set): the first epoch
    (starting the workers) and the second."""
    from mtmm_core.config import load_config
    from mtmm_core.trainer import Trainer

    config = load_config(None, [*SMALL_MODEL, "data.name=png_avdigits", f"data.root={root}", f"data.size={size}",
                                f"train.batch_size={batch_size}", f"train.workers={workers}", "train.epochs=2",
                                "train.device=cpu", f"train.threads={threads}", "train.progress=false",
                                "train.log_every=1000"])
    config["model"]["fusion"] = {"name": "concat"}
    trainer = Trainer(config, out, force=True)
    per_step, cpu_per_step = [], []
    try:
        for epoch in range(2):
            trainer.epoch, trainer.step_in_epoch = epoch, 0
            started, cpu_started = time.perf_counter(), time.process_time()
            trainer._train_epoch()
            per_step.append((time.perf_counter() - started) / trainer.steps_per_epoch)
            cpu_per_step.append((time.process_time() - cpu_started) / trainer.steps_per_epoch)
    finally:
        trainer.close()
        loader = getattr(trainer, "_loader", None)
        if loader is not None:
            loader.close()
    return {"cold_ms_per_step": per_step[0] * 1e3, "warm_ms_per_step": per_step[1] * 1e3,
            "warm_main_cpu_ms_per_step": cpu_per_step[1] * 1e3,
            "warm_samples_per_s": batch_size / per_step[1], "steps_per_epoch": trainer.steps_per_epoch}


def machine() -> dict[str, Any]:
    """The CPU count, the cores this process may use, the load average, torch's version and thread count."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_count": os.cpu_count(), "usable_cores": usable,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts (default 0,2)")
    parser.add_argument("--size", type=int, default=224, help="side of the PNG files in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process (default 1)")
    parser.add_argument("--no-train", action="store_true", help="time the loading only")
    parser.add_argument("--no-json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from mtmm_core import plugins

    torch.set_num_threads(args.threads)
    counts = [int(part) for part in args.workers.split(",") if part.strip()]
    plugins.register_plugin(PngDigitsPlugin(), name="bench-png-avdigits")
    before = machine()
    with tempfile.TemporaryDirectory(prefix="mtmm-bench-loader-") as temp:
        root = Path(temp) / "png"
        started = time.perf_counter()
        data = PngDigits(root=str(root), size=args.size)
        written = time.perf_counter() - started
        split = data.splits["train"]
        files = sorted(root.glob("*.png"))
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(f"{len(files)} PNG files of {args.size}x{args.size} ({megabytes:.1f} MB) "
              f"written in {written:.1f} s; train split {len(split)} rows, batch {args.batch_size}; "
              f"torch {torch.__version__}, {args.threads} thread(s) in the training process; "
              f"{before['usable_cores']} usable cores of {before['cpu_count']}, load {before['load_average']}")
        loads: dict[int, list[list[float]]] = {n: [] for n in counts}
        trains: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
        for rep in range(args.reps):
            for workers in counts:  # interleaved: a busy spell slows every count alike
                loads[workers].append(time_loading(split, workers, args.batch_size))
                if not args.no_train:
                    trains[workers].append(time_training(root, args.size, workers, args.batch_size, args.threads,
                                                         Path(temp) / f"run-{workers}-{rep}"))
    results = []
    for workers in counts:
        cold = statistics.median(times[0] for times in loads[workers])
        warm = statistics.median(times[1] for times in loads[workers])
        row: dict[str, Any] = {"workers": workers, "load_cold_samples_per_s": len(split) / cold,
                               "load_warm_samples_per_s": len(split) / warm, "load_epoch_s": loads[workers]}
        if trains[workers]:
            for key in ("cold_ms_per_step", "warm_ms_per_step", "warm_samples_per_s", "warm_main_cpu_ms_per_step"):
                row[f"train_{key}"] = statistics.median(t[key] for t in trains[workers])
            row["train_steps_per_epoch"] = trains[workers][0]["steps_per_epoch"]
        results.append(row)
    print("\n| workers | load samples/s (warm) | load samples/s (cold) | train ms/step (warm) | train samples/s (warm) "
          "| training process CPU ms/step |")
    print("|---|---|---|---|---|---|")
    for row in results:
        train = (f"{row['train_warm_ms_per_step']:.1f} | {row['train_warm_samples_per_s']:.0f} | "
                 f"{row['train_warm_main_cpu_ms_per_step']:.1f}" if "train_warm_ms_per_step" in row else "- | - | -")
        print(f"| {row['workers']} | {row['load_warm_samples_per_s']:.0f} | {row['load_cold_samples_per_s']:.0f} | "
              f"{train} |")
    if args.no_json:
        return 0
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"loader_cpu_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine_before": before, "machine_after": machine(), "size": args.size, "batch_size": args.batch_size,
            "reps": args.reps, "train_rows": len(split), "command": "python benchmarks/bench_loader.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "timing": "time.perf_counter around one epoch; worker counts interleaved within each rep; medians; "
                      "the training process runs --threads torch threads, each worker one"}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
