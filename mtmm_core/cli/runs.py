"""``mtmm evaluate``, ``predict`` and ``plot``: use a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtmm_core.cli._output import print_json, print_metrics
from mtmm_core.errors import UsageError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mtmm_core.config import read_run_config
    from mtmm_core.evaluation import select_modalities
    from mtmm_core.trainer import Trainer

    run = Path(args.run_dir)
    config = read_run_config(run)
    if not (run / "last.pt").is_file():
        raise UsageError(f"{run} holds no checkpoint (last.pt): the run did not finish an epoch")
    if args.data:
        config["data"] = {"name": args.data}
    trainer = Trainer(config, run, resume=True, read_only=True)
    modalities = select_modalities(args.modalities, trainer.model.modalities)
    metrics = trainer.test(modalities=modalities, write=False)
    if args.json:
        print_json(metrics)
    else:
        shown = ", ".join(modalities) if modalities else "all modalities"
        print_metrics(metrics, f"test metrics of {run} ({shown}):")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mtmm_core.predict import predict

    modalities = args.modalities.split(",") if args.modalities else None
    print(predict(args.run_dir, args.data, args.out, modalities=modalities))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from mtmm_core.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``predict`` and ``plot`` to the ``mtmm`` parser."""
    evaluating = commands.add_parser("evaluate", help="test metrics of a finished run")
    evaluating.add_argument("run_dir")
    evaluating.add_argument("--modalities", help="comma-separated subset of modalities, e.g. image")
    evaluating.add_argument("--data", help="evaluate on another registered data set or data folder")
    evaluating.add_argument("--json", action="store_true", help="machine-readable output")
    evaluating.set_defaults(run=cmd_evaluate)

    predicting = commands.add_parser("predict", help="predictions of a trained run for every sample (.npz)")
    predicting.add_argument("run_dir")
    predicting.add_argument("--data", required=True, help="a registered data set or a data folder")
    predicting.add_argument("--out", required=True, help="output file (.npz)")
    predicting.add_argument("--modalities", help="comma-separated subset of modalities")
    predicting.set_defaults(run=cmd_predict)

    plotting = commands.add_parser("plot", help="PNG of per-task losses, validation metrics and task weights")
    plotting.add_argument("run_dir")
    plotting.add_argument("--out", help="PNG path (default RUN_DIR/training.png)")
    plotting.set_defaults(run=cmd_plot)
