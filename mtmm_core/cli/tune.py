"""``mtmm tune``: search a config's ``tune.space`` with Optuna (the ``tune`` extra; docs/tune.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mtmm_core.cli._output import table
from mtmm_core.errors import UsageError


def summary_table(result) -> str:
    """The trials of a :class:`~mtmm_core.tune.TuneResult` as a table; the best is marked ``*``."""
    from mtmm_core.tune import format_value

    rows = []
    for r in result.trials:
        values = "  ".join(f"{key}={format_value(value)}" for key, value in r.values.items())
        if r.note and r.state != "complete":
            values += f"  ({r.note})"
        best = result.best is not None and r.number == result.best.number
        rows.append([f"{r.number}{' *' if best else ''}", r.state, "-" if r.metric is None else f"{r.metric:.4f}",
                     "-" if r.best_epoch is None else f"{r.best_epoch}/{r.epochs}",
                     "-" if r.seconds is None else f"{r.seconds:.0f}", values])
    return table(rows, ["TRIAL", "STATE", result.metric.upper(), "EPOCH", "SECONDS", "VALUES"])


def cmd_tune(args: argparse.Namespace) -> int:
    from mtmm_core.config import load_config
    from mtmm_core.interrupts import TrainingInterrupted
    from mtmm_core.tune import BEST_FILE, SUMMARY_FILE, import_optuna, run_tune

    import_optuna()  # before anything else: without Optuna, say how to install it
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1 (the number of trials the study should hold), got {args.trials}")
    if args.resume:
        for flag, value in (("a config file", args.config), ("--set", args.set), ("--out", args.out),
                            ("--force", args.force)):
            if value:
                raise UsageError(f"--resume continues the tune in {args.resume} with its own config.yaml; {flag} "
                                 "cannot be combined with it (only --trials, to ask for more trials)")
        out, config = Path(args.resume), None
    else:
        if not args.config:
            raise UsageError("give the config to tune (a file or a shipped config's name, with a tune section; "
                             "docs/tune.md), or --resume TUNE_DIR")
        config = load_config(args.config, list(args.set or []))
        out = Path(args.out) if args.out else Path("runs") / time.strftime("tune-%Y%m%d-%H%M%S")
    started = time.time()
    try:
        result = run_tune(config, out, args.trials, resume=bool(args.resume), force=args.force,
                          progress=args.progress)
    except KeyboardInterrupt as stopped:
        if (out / "study.db").is_file():
            print(f"mtmm: tune stopped; the trials so far are in {out / SUMMARY_FILE}. `mtmm tune --resume {out}` "
                  "continues it (an interrupted trial starts again with the same values)", file=sys.stderr)
        else:
            print("mtmm: interrupted", file=sys.stderr)
        return stopped.exit_code if isinstance(stopped, TrainingInterrupted) else 130
    print(f"{len(result.trials)} trials of {result.metric} ({result.direction}) in {time.time() - started:.0f} s, "
          f"tune folder {out}:")
    if result.trials:
        print(summary_table(result))
    if result.best is None:
        print(f"mtmm: error: no trial completed; see {out / SUMMARY_FILE} and each trial's train.log",
              file=sys.stderr)
        return 1
    best = result.best
    print(f"best: trial {best.number} ({best.run}), validation {result.metric} {best.metric:.4f} at epoch "
          f"{best.best_epoch}; its config is {out / BEST_FILE}: `mtmm train {out / BEST_FILE}` trains it again")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``tune`` to the ``mtmm`` parser."""
    tuning = commands.add_parser("tune", help="search hyper-parameters with Optuna (the config's tune section)")
    tuning.add_argument("config", nargs="?", help="a config file with a tune section, or a shipped config's name")
    tuning.add_argument("--trials", type=int, metavar="N",
                        help="trials the study should hold when done (default: tune.trials, 20)")
    tuning.add_argument("--out", help="tune folder for the study and its trials' run folders "
                        "(default runs/tune-<time>)")
    tuning.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=5 or --set tune.sampler=random "
                        "(repeatable)")
    tuning.add_argument("--force", action="store_true",
                        help="start a new study even if --out holds something else (an old study is replaced)")
    tuning.add_argument("--resume", metavar="TUNE_DIR",
                        help="continue the tune in that folder with its own config (--trials may raise its count)")
    tuning.add_argument("--progress", action="store_true",
                        help="show each trial's training output (epoch lines, progress bar) instead of writing "
                        "it to trial-NNN/train.log")
    tuning.set_defaults(run=cmd_tune)
