"""``mtmm export``: a trained run's model as safetensors, ONNX or TorchScript (docs/export.md)."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_export(args: argparse.Namespace) -> int:
    from mtmm_core.export import export_run

    out = export_run(args.run_dir, args.out, args.format, force=args.force)
    record = json.loads((out / "export.json").read_text())
    checked = record.get("verification")
    if checked:
        sizes = " and ".join(str(size) for size in checked["batch_sizes"])
        largest = max(checked["max_abs_diff"].values(), default=0.0)
        print(f"{args.format}: checked on batches of {sizes} samples; largest difference from the PyTorch model "
              f"{largest:.2g}", file=sys.stderr)
    print(out)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``mtmm`` parser."""
    exporting = commands.add_parser("export", help="a trained run's model as safetensors, ONNX or TorchScript")
    exporting.add_argument("run_dir")
    exporting.add_argument("--format", default="safetensors",
                           help="safetensors (default: weights, model.yaml and config.yaml; loads like a run), "
                                "onnx or torchscript (a traced model with flat tensor inputs)")
    exporting.add_argument("--out", help="output folder (default RUN_DIR/export-FORMAT); must be new or empty")
    exporting.add_argument("--force", action="store_true",
                           help="export into a non-empty folder, replacing the files an export writes there")
    exporting.set_defaults(run=cmd_export)
