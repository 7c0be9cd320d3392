"""Step time per process of three ways to train data-parallel: the old per-parameter averaging,
DistributedDataParallel and FSDP2, in one torchrun job.

    python benchmarks/bench_distributed.py                  # 2 processes, gloo on the CPU
    python benchmarks/bench_distributed.py --nproc 4 --steps 20 --rounds 5

Every mode trains the default config's model (avdigits, ``train.batch_size`` 64 split over the
processes) through ``Trainer._step``, on the same batches; the modes take turns, ``--rounds`` times
``--steps`` steps each after ``--warmup`` steps, so that a machine shared with other work slows
them alike. ``per_parameter`` is what mtmm did before ``train.strategy``: no wrapper, then one
all-reduce per parameter after the whole backward. The JSON goes to ``benchmarks/results/``.
With CUDA GPUs (one per process) the same command runs NCCL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
MODES = ("per_parameter", "ddp", "fsdp")


def _per_parameter_strategy():
    """The old averaging as a :class:`~mtmm_core.strategy.Strategy`: nothing wrapped, then one all-reduce
    per parameter (a missing gradient counts as 0) after the backward."""
    from mtmm_core.strategy import Strategy

    class PerParameterAveraging(Strategy):
        def __init__(self, kind, model, context, device, precision):
            super().__init__("ddp", model, context.__class__(), device, precision)  # a 1-process context: no wrapping
            self.context = context

        def after_backward(self) -> None:
            for parameter in self.model.parameters():
                if not parameter.requires_grad:
                    continue
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
                parameter.grad /= self.context.world_size

    return PerParameterAveraging


def _trainer(mode: str, out_dir: Path, overrides: list[str]):
    import mtmm_core.trainer as trainer_module
    from mtmm_core.config import load_config

    config = load_config(None, ["train.progress=false", "train.threads=1", "train.device=auto", *overrides,
                                f"train.strategy={'fsdp' if mode == 'fsdp' else 'ddp'}"])
    original = trainer_module.Strategy
    if mode == "per_parameter":
        trainer_module.Strategy = _per_parameter_strategy()
    try:
        return trainer_module.Trainer(config, out_dir / mode)
    finally:
        trainer_module.Strategy = original


def worker(args: argparse.Namespace) -> None:
    """One rank: build a trainer per mode, time their steps in turns, rank 0 writes the JSON."""
    from mtmm_core.evaluation import check_batch, to_device
    from mtmm_core.model import value_checks

    out_dir = Path(args.work)
    trainers = {mode: _trainer(mode, out_dir, args.set) for mode in MODES}
    first = trainers["ddp"]
    rank, world = first.context.rank, first.context.world_size
    split, batch_size = first.dataset.splits["train"], first.settings.batch_size
    batches = []
    for step in range(args.warmup + args.steps):
        rows = list(range(step * batch_size, (step + 1) * batch_size))[rank::world]
        batch = split.batch(rows)
        check_batch(first.model, batch)
        batches.append(to_device(batch, first.device, tasks=first.model.tasks))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode, trainer in trainers.items():
            trainer.model.train()
            with value_checks(False):
                for index, batch in enumerate(batches):
                    if index == args.warmup:
                        if trainer.device.type == "cuda":
                            torch.cuda.synchronize()
                        dist.barrier()
                        started = time.perf_counter()
                    trainer._step(batch)
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                dist.barrier()
                times[mode].append((time.perf_counter() - started) / args.steps)
    for trainer in trainers.values():
        trainer.close()
    everyone = [None] * world
    dist.all_gather_object(everyone, times)
    if rank == 0:
        per_mode = {mode: statistics.median(t for ranks in everyone for t in ranks[mode]) for mode in MODES}
        result = {
            "benchmark": "distributed step time per process",
            "backend": dist.get_backend(), "device": first.device.type, "processes": world,
            "threads_per_process": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "config": "configs/default.yaml", "overrides": args.set, "global_batch": batch_size,
            "warmup_steps": args.warmup, "timed_steps": args.steps, "rounds": args.rounds,
            "step_ms_median": {mode: round(1000 * value, 2) for mode, value in per_mode.items()},
            "step_ms_by_round": {mode: [[round(1000 * t, 2) for t in ranks[mode]] for ranks in everyone]
                                 for mode in MODES},
            "ratio_to_per_parameter": {mode: round(per_mode[mode] / per_mode["per_parameter"], 3) for mode in MODES},
        }
        if result["backend"] != "nccl":
            result["nccl"] = "owed: no machine with several GPUs was lent for this measurement"
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("backend", "processes", "step_ms_median",
                                                  "ratio_to_per_parameter")}, indent=2))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each round")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every mode")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--json", help="output file (default benchmarks/results/distributed_<backend>_<time>.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= args.nproc else "gloo"
    args.json = args.json or str(ROOT / "benchmarks" / "results" /
                                 f"distributed_{backend}_{time.strftime('%Y%m%d-%H%M%S')}.json")
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                   __file__, "--worker", "--work", work, "--json", args.json, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
        for override in args.set:
            command += ["--set", override]
        environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run(command, check=True, env=environment, cwd=ROOT)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
