"""``mtmm data check``: every problem of a data folder, or its summary (and warnings about badly scaled
features); ``mtmm data build``: a table and its schema into a data folder (docs/tables.md)."""

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
    summary = statistics = None
    warnings: list[str] = []
    if not problems:
        from mtmm_core.datastats import feature_statistics, scale_warnings

        dataset = FolderDataset(args.path, check=False)
        summary, statistics = dataset.summary(), feature_statistics(dataset)
        warnings = scale_warnings(statistics)
    if args.json:
        print_json({"ok": not problems, "problems": [asdict(p) for p in problems], "summary": summary,
                    "warnings": warnings, **({"statistics": statistics} if args.stats else {})})
    elif problems:
        rows = [[p.file, p.field or "-", "-" if p.row is None else str(p.row), p.message] for p in problems]
        print(table(rows, ["FILE", "FIELD", "ROW", "PROBLEM"]))
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {args.path}", file=sys.stderr)
    else:
        print(summary_line(summary))
        if args.config:
            print(f"{args.path}: fits the model of config {args.config}")
        if args.stats:
            from mtmm_core.datastats import statistics_rows

            print(table(statistics_rows(statistics), ["MODALITY", "FEATURE", "COUNT", "MEAN", "STD", "MIN", "MAX"]))
        for warning in warnings:
            print(f"warning: {warning}")
    return 1 if problems else 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from mtmm_core.databuild import build_data
    from mtmm_core.userdata import FolderDataset, summary_line

    out = build_data(args.table, args.schema, args.out, force=args.force)
    print(summary_line(FolderDataset(out, check=False).summary()))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``data check`` and ``data build`` to the ``mtmm`` parser."""
    data = commands.add_parser("data", help="work with data folders (docs/data.md)")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    checking = data_commands.add_parser("check", help="report every problem of a data folder; exit 1 if any")
    checking.add_argument("path", help="a folder holding dataset.yaml and .npy files")
    checking.add_argument("--config", help="also check the data against the model of this config "
                                           "(a config file, or the name of a shipped config)")
    checking.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a value of --config, as for mtmm train (repeatable)")
    checking.add_argument("--json", action="store_true", help="machine-readable output")
    checking.add_argument("--stats", action="store_true",
                          help="print each feature's count, mean, std, min and max (present samples)")
    checking.set_defaults(run=cmd_data_check)
    building = data_commands.add_parser("build", help="build a data folder from a table (CSV, TSV, Parquet) and a "
                                                      "schema, learning the preprocessing from the training rows")
    building.add_argument("table", help="a .csv, .tsv or .parquet file: one row per sample")
    building.add_argument("--schema", required=True, help="schema.yaml: the features and targets (docs/tables.md)")
    building.add_argument("--out", required=True, help="the data folder to write")
    building.add_argument("--force", action="store_true", help="replace an earlier build in --out")
    building.set_defaults(run=cmd_data_build)
