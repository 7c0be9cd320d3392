"""``mtmm evaluate``, ``predict`` and ``plot``: use a finished run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtmm_core.cli._output import print_json, print_metrics
from mtmm_core.errors import UsageError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mtmm_core.api import load_run
    from mtmm_core.config import read_run_config
    from mtmm_core.data import load_dataset
    from mtmm_core.evaluation import classification_tasks, evaluate, select_modalities
    from mtmm_core.trainer import choose_device

    run_dir = Path(args.run_dir)
    settings = read_run_config(run_dir)["train"]
    figure_path = None
    if args.plot is not None:
        from mtmm_core.plot import output_path, pyplot

        pyplot()  # without matplotlib, say so before the data loads
        figure_path = output_path(args.plot, run_dir, default="confusion.png", flag="--plot")
    run = load_run(run_dir, device=choose_device(settings["device"]))  # best.pt, last.pt or model.safetensors
    modalities = select_modalities(args.modalities, run.model.modalities)
    if figure_path is not None and not classification_tasks(run.model):
        raise UsageError(f"--plot: {run_dir} has no classification task (a head with loss_kind cross_entropy or "
                         "bce), so there is no confusion matrix to draw")
    test = load_dataset({"name": args.data} if args.data else run.config["data"]).splits["test"]
    device = next(run.model.parameters()).device
    metrics = evaluate(run.model, test, device, settings["eval_batch_size"], modalities)
    shown = ", ".join(modalities) if modalities else "all modalities"
    if args.json:
        print_json(metrics)
    else:
        print_metrics(metrics, f"test metrics of {run_dir} ({shown}):")
    if figure_path is not None:
        from mtmm_core.confusion import confusion_matrices, plot_confusion
        from mtmm_core.evaluation import classification_labels

        labels = classification_labels(run.model, test, device, settings["eval_batch_size"], modalities)
        plot_confusion(confusion_matrices(labels), figure_path,
                       title=f"confusion matrices of {run_dir} on the test split ({shown})")
        # with --json, stdout holds the JSON alone
        print(f"confusion matrices: {figure_path}", file=sys.stderr if args.json else sys.stdout)
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
    evaluating.add_argument("--plot", nargs="?", const="", metavar="PNG",
                            help="also draw a confusion matrix per classification task on the test split "
                                 "(default RUN_DIR/confusion.png)")
    evaluating.set_defaults(run=cmd_evaluate)

    predicting = commands.add_parser("predict", help="predictions of a trained run for every sample (.npz)")
    predicting.add_argument("run_dir")
    predicting.add_argument("--data", required=True, help="a registered data set, a data folder, or a table of new "
                                                          "raw rows (.csv, .parquet) for a run trained on a built table")
    predicting.add_argument("--out", required=True, help="output file (.npz)")
    predicting.add_argument("--modalities", help="comma-separated subset of modalities")
    predicting.set_defaults(run=cmd_predict)

    plotting = commands.add_parser("plot", help="PNG of each task's train and validation losses and validation "
                                                 "metrics, the total loss and the task weights, best epoch marked")
    plotting.add_argument("run_dir")
    plotting.add_argument("--out", help="image path, its format from the suffix (default RUN_DIR/training.png)")
    plotting.set_defaults(run=cmd_plot)
