"""The ``mtmm`` command line: list, plugins, describe, train, evaluate, predict, plot and data check."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from mtmm_core import plugins
from mtmm_core.components import describe, list_components
from mtmm_core.errors import MtmmError
from mtmm_core.registry import KINDS, normalize_kind


def _width() -> int:
    return shutil.get_terminal_size((100, 24)).columns


def _table(rows: list[list[str]], headers: list[str]) -> str:
    """Rows as aligned columns, the last column wrapped to fit the terminal."""
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers) - 1)]
    indent = sum(widths) + 2 * len(widths)
    room = max(30, _width() - indent)
    lines = []
    for row in [headers] + rows:
        first, *rest = textwrap.wrap(str(row[-1]), room) or [""]
        lines.append("  ".join([str(c).ljust(w) for c, w in zip(row, widths)] + [first]).rstrip())
        lines.extend(" " * indent + more for more in rest)
    return "\n".join(lines)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_list(args: argparse.Namespace) -> int:
    kind = normalize_kind(args.kind) if args.kind else None
    components = list_components(kind, args.pattern)
    if args.json:
        _print_json([{"kind": c.kind, "name": c.name, "qualified_name": c.qualified_name,
                      "distribution": c.distribution, "version": c.version, "description": c.description}
                     for c in components])
        return 0
    if not components:
        print(f"no {kind or 'component'} matches {args.pattern!r}", file=sys.stderr)
        return 1
    names = [(c.kind, c.name) for c in components]
    rows = [[c.kind, c.qualified_name if names.count((c.kind, c.name)) > 1 else c.name,
             f"{c.distribution} {c.version}".strip(), c.description] for c in components]
    print(_table(rows, ["KIND", "NAME", "DISTRIBUTION", "DESCRIPTION"]))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    infos = plugins.plugin_infos()
    if args.json:
        _print_json([vars(info) for info in infos])
        return 0
    rows = []
    for info in infos:
        detail = ", ".join(info.components) if info.status == "loaded" else info.error or ""
        hooks = ", ".join(h.removeprefix("register_") for h in info.hooks) or "-"
        rows.append([info.name, info.distribution, info.version, info.status, hooks, detail])
    print(_table(rows, ["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "HOOKS", "COMPONENTS / ERROR"]))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    info = describe(args.kind, args.name)
    if args.json:
        _print_json(info)
        return 0
    print(f"{info['kind']} {info['name']}  ({info['distribution']} {info['version']}, plugin {info['plugin']})")
    print(f"  {info['description']}")
    print("parameters:")
    rows = []
    for p in info["parameters"]:
        default = "required" if p["required"] else f"default {p['default']!r}"
        if p["set_by_mtmm"]:
            default = "set by mtmm"
        rows.append(["  " + p["name"], p["type"], default])
    print(_table(rows, ["  NAME", "TYPE", "DEFAULT"]) if rows else "  (none)")
    return 0


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    """Test metrics as a task x metric table."""
    tasks: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        task, _, metric = key.rpartition(".")
        if task:
            tasks.setdefault(task, {})[metric] = value
    print(title)
    rows = [[task, "  ".join(f"{m} {v:.4f}" for m, v in values.items())] for task, values in tasks.items()]
    print(_table(rows, ["TASK", "METRICS"]))


def _launch_processes(args: argparse.Namespace) -> int:
    """``mtmm train --nproc N``: run this same command in N processes through torchrun."""
    from torch.distributed.run import main as torchrun

    argv = list(args.argv)
    index = argv.index("--nproc") if "--nproc" in argv else None
    if index is not None:
        del argv[index:index + 2]
    else:
        argv = [a for a in argv if not a.startswith("--nproc=")]
    if not args.out and not args.resume:
        argv += ["--out", str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))]  # one folder for every rank
    try:
        torchrun(["--standalone", f"--nproc_per_node={args.nproc}", "-m", "mtmm_core.cli", *argv])
    except Exception as error:  # torchrun's ChildFailedError: the ranks' own errors are printed above
        print(f"mtmm: error: a training process failed: {type(error).__name__}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mtmm_core.config import load_config, validate_config
    from mtmm_core.trainer import Trainer

    distributed_job = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.nproc > 1 and not distributed_job:
        return _launch_processes(args)
    if distributed_job and not args.out and not args.resume:
        raise ValueError("under torchrun, pass --out RUN_DIR so that every process writes to the same run folder")

    if args.resume:
        config = validate_config(yaml.safe_load((Path(args.resume) / "config.yaml").read_text()))
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
    try:
        metrics = Trainer(config, out_dir, resume=bool(args.resume)).run()
    except KeyboardInterrupt:
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        _print_metrics(metrics, f"test metrics ({time.time() - started:.0f} s, run folder {out_dir}):")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mtmm_core.config import validate_config
    from mtmm_core.trainer import Trainer

    run = Path(args.run_dir)
    config = validate_config(yaml.safe_load((run / "config.yaml").read_text()))
    if args.data:
        config["data"] = {"name": args.data}
    trainer = Trainer(config, run, resume=True)
    modalities = args.modalities.split(",") if args.modalities else None
    metrics = trainer.test(modalities=modalities, write=False)
    if args.json:
        _print_json(metrics)
    else:
        shown = ", ".join(modalities) if modalities else "all modalities"
        _print_metrics(metrics, f"test metrics of {run} ({shown}):")
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


def cmd_data_check(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mtmm_core.userdata import FolderDataset, check_dataset, summary_line

    problems = check_dataset(args.path)
    summary = None if problems else FolderDataset(args.path, check=False).summary()
    if args.json:
        _print_json({"ok": not problems, "problems": [asdict(p) for p in problems], "summary": summary})
    elif problems:
        rows = [[p.file, p.field or "-", "-" if p.row is None else str(p.row), p.message] for p in problems]
        print(_table(rows, ["FILE", "FIELD", "ROW", "PROBLEM"]))
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {args.path}", file=sys.stderr)
    else:
        print(summary_line(summary))
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mtmm`` command."""
    parser = argparse.ArgumentParser(prog="mtmm", description="Multimodal, multitask learning from registry names.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list registered components")
    listing.add_argument("kind", nargs="?", help=f"one of {', '.join(KINDS)} (plural accepted)")
    listing.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on the name, e.g. 'seq*'")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=cmd_list)

    listing = commands.add_parser("plugins", help="list plugins: distribution, version, hooks, components, status")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=cmd_plugins)

    describing = commands.add_parser("describe", help="show a component's description and parameters")
    describing.add_argument("kind", help=f"one of {', '.join(KINDS)}")
    describing.add_argument("name", help="component name, or distribution:name")
    describing.add_argument("--json", action="store_true", help="machine-readable output")
    describing.set_defaults(run=cmd_describe)

    training = commands.add_parser("train", help="train a model (default: configs/default.yaml on avdigits)")
    training.add_argument("config", nargs="?", help="a config file, or the name of a shipped config")
    training.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    training.add_argument("--data", help="the data set: a registered name or a data folder (docs/data.md)")
    training.add_argument("--out", help="run folder (default runs/<time>)")
    training.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    training.add_argument("--init-from", metavar="RUN_DIR",
                          help="initialise from that run's weights (transfer.init_from; docs/transfer.md)")
    training.add_argument("--nproc", type=int, default=1,
                          help="train data-parallel in this many processes on this machine (runs torchrun)")
    training.set_defaults(run=cmd_train)

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

    data = commands.add_parser("data", help="work with data folders (docs/data.md)")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    checking = data_commands.add_parser("check", help="report every problem of a data folder; exit 1 if any")
    checking.add_argument("path", help="a folder holding dataset.yaml and .npy files")
    checking.add_argument("--json", action="store_true", help="machine-readable output")
    checking.set_defaults(run=cmd_data_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mtmm`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except (MtmmError, ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"mtmm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
