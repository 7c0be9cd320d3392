"""``mtmm train``: one process, several through torchrun (``--nproc``), or a resumed run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mtmm_core.cli._output import print_metrics
from mtmm_core.errors import UsageError

# --set keys a resumed run may change: they do not change what it computes.
#: What ``--set`` may change on ``--resume``: settings that change no number of the run (how often the losses are
#: read, how many processes load the batches: the same batches for any number, tests/test_loader.py).
RESUMABLE_SETTINGS = ("train.device", "train.progress", "train.eval_batch_size", "train.collective_timeout",
                      "train.log_every", "train.workers", "train.prefetch")


def _resumed_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config of the run in ``--resume RUN_DIR``, with the ``--set`` overrides a resume may apply."""
    from mtmm_core.config import read_run_config

    for flag, value in (("a config file", args.config), ("--data", args.data), ("--init-from", args.init_from),
                        ("--force", args.force)):
        if value:
            raise UsageError(f"--resume continues {args.resume} with its own config.yaml; {flag} cannot be "
                             "combined with it (start a new run with --init-from RUN_DIR to reuse its weights)")
    overrides = list(args.set or [])
    for override in overrides:
        key = override.partition("=")[0].strip()
        if key not in RESUMABLE_SETTINGS:
            raise UsageError(f"--set {key} cannot change a resumed run: its config.yaml fixes that value so "
                             f"the run continues exactly as it started. A resume may set only "
                             f"{', '.join(RESUMABLE_SETTINGS)}; to change anything else, start a new run "
                             f"with --init-from {args.resume}")
    config = read_run_config(args.resume, overrides)
    for override in overrides:
        print(f"resuming with {override} (this session only; config.yaml keeps the run's own value)",
              file=sys.stderr)
    return config


def _launch_processes(args: argparse.Namespace) -> int:
    """``mtmm train --nproc N``: run this same command in N processes through torchrun (on several machines,
    start ``torchrun ... -m mtmm_core.cli train`` on each yourself: README, "Several processes or machines")."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    argv = list(args.argv)
    index = argv.index("--nproc") if "--nproc" in argv else None
    if index is not None:
        del argv[index:index + 2]
    else:
        argv = [a for a in argv if not a.startswith("--nproc=")]
    if not args.out and not args.resume:
        argv += ["--out", str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))]  # one folder for every rank
    # Usage errors once, here, rather than once per process: the config, and where the run goes.
    from mtmm_core.config import load_config
    from mtmm_core.run_folder import RunFolder

    if args.resume:
        _resumed_config(args)
    else:
        load_config(args.config, list(args.set or []))
        if args.out:
            RunFolder(args.out).check_new(args.force)
    try:
        torchrun(["--standalone", f"--nproc_per_node={args.nproc}", "-m", "mtmm_core.cli", *argv])
    except SignalException as error:  # Ctrl-C or SIGTERM: torchrun passed it on; rank 0 said where it saved
        return 128 + int(error.sigval)
    except Exception as error:  # torchrun's ChildFailedError: the ranks' own errors are printed above
        codes = {failure.exitcode for failure in getattr(error, "failures", {}).values()}
        if codes == {2}:  # the same usage error in every process, already printed
            return 2
        print(f"mtmm: error: a training process failed: {type(error).__name__}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mtmm_core.config import load_config
    from mtmm_core.interrupts import TrainingInterrupted
    from mtmm_core.trainer import Trainer

    distributed_job = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.nproc > 1 and not distributed_job:
        return _launch_processes(args)
    if distributed_job and not args.out and not args.resume:
        raise UsageError("under torchrun, pass --out RUN_DIR so that every process writes to the same run folder")

    if args.resume:
        config = _resumed_config(args)
        out_dir = Path(args.resume)
    else:
        overrides = list(args.set or [])
        if args.data:
            overrides.append(f"data.name={args.data}")
        if args.init_from:
            overrides.append(f"transfer.init_from={json.dumps(args.init_from)}")  # quoted: always a string
        config = load_config(args.config, overrides)
        out_dir = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    started = time.time()
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        metrics = Trainer(config, out_dir, resume=bool(args.resume), force=args.force).run()
    except TrainingInterrupted as stopped:
        if main_rank:
            print(f"mtmm: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began
        if main_rank:
            processes = f" --nproc {os.environ['WORLD_SIZE']}" if distributed_job else ""
            if (out_dir / "last.pt").is_file():
                print(f"mtmm: interrupted without saving this step; the last checkpoint is {out_dir / 'last.pt'}: "
                      f"continue with `mtmm train{processes} --resume {out_dir}`", file=sys.stderr)
            else:
                print("mtmm: interrupted before training saved anything; there is nothing to resume",
                      file=sys.stderr)
        return 130
    if main_rank:
        print_metrics(metrics, f"test metrics ({time.time() - started:.0f} s, run folder {out_dir}):")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``mtmm`` parser."""
    training = commands.add_parser("train", help="train a model (default: configs/default.yaml on avdigits)")
    training.add_argument("config", nargs="?", help="a config file, or the name of a shipped config")
    training.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    training.add_argument("--data", help="the data set: a registered name or a data folder (docs/data.md); "
                                         "a table needs its schema: --set data.schema=FILE (docs/tables.md)")
    training.add_argument("--out", help="run folder (default runs/<time>)")
    training.add_argument("--resume", metavar="RUN_DIR",
                          help=f"continue an interrupted run (--set may change only {', '.join(RESUMABLE_SETTINGS)})")
    training.add_argument("--force", action="store_true",
                          help="start the run even if --out holds other files (an old run's files are replaced)")
    training.add_argument("--init-from", metavar="RUN_DIR",
                          help="initialise from that run's weights (transfer.init_from; docs/transfer.md)")
    training.add_argument("--nproc", type=int, default=1,
                          help="train data-parallel in this many processes on this machine (runs torchrun; "
                               "train.strategy picks DDP or FSDP; a resumed run may use another count)")
    training.set_defaults(run=cmd_train)
