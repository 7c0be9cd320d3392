"""``mtmm data check``: every problem of a data folder, or its summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtmm_core.cli._output import print_json, table


def cmd_data_check(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mtmm_core.data_fit import check_against_config
    from mtmm_core.errors import UsageError
    from mtmm_core.userdata import FolderDataset, check_dataset, summary_line

    if not Path(args.path).is_dir():
        raise UsageError(f"{args.path}: no such folder; give a data folder holding dataset.yaml (docs/data.md)")
    if args.set and not args.config:
        raise UsageError("--set overrides a config: give one with --config CONFIG")
    if args.config:  # a config that cannot be read raises: exit 2
        problems = check_against_config(args.path, args.config, list(args.set or []))
    else:
        problems = check_dataset(args.path)
    summary = None if problems else FolderDataset(args.path, check=False).summary()
    if args.json:
        print_json({"ok": not problems, "problems": [asdict(p) for p in problems], "summary": summary})
    elif problems:
        rows = [[p.file, p.field or "-", "-" if p.row is None else str(p.row), p.message] for p in problems]
        print(table(rows, ["FILE", "FIELD", "ROW", "PROBLEM"]))
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {args.path}", file=sys.stderr)
    else:
        print(summary_line(summary))
        if args.config:
            print(f"{args.path}: fits the model of config {args.config}")
    return 1 if problems else 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``data check`` to the ``mtmm`` parser."""
    data = commands.add_parser("data", help="work with data folders (docs/data.md)")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    checking = data_commands.add_parser("check", help="report every problem of a data folder; exit 1 if any")
    checking.add_argument("path", help="a folder holding dataset.yaml and .npy files")
    checking.add_argument("--config", help="also check the data against the model of this config "
                                           "(a config file, or the name of a shipped config)")
    checking.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a value of --config, as for mtmm train (repeatable)")
    checking.add_argument("--json", action="store_true", help="machine-readable output")
    checking.set_defaults(run=cmd_data_check)
