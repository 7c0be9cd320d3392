"""The ``mtmm`` command line: list, plugins, describe, train, evaluate, predict, plot and data check."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import yaml

from mtmm_core import plugins
from mtmm_core.components import describe, list_components
from mtmm_core.errors import MtmmError, NonFiniteError, RunError, UsageError
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
        for clash in info.clashes:  # a name another distribution also registered: say how to reach this one
            outcome = "built-in keeps the name" if clash["resolves_to"] else "plain name is ambiguous"
            detail += f"; clash: {clash['kind']} {clash['name']} ({outcome}; use {clash['use']})"
        hooks = ", ".join(h.removeprefix("register_") for h in info.hooks) or "-"
        status = f"{info.status} (clash)" if info.clashes else info.status
        rows.append([info.name, info.distribution, info.version, status, hooks, detail])
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


# --set keys a resumed run may change: they do not change what it computes.
RESUMABLE_SETTINGS = ("train.device", "train.progress", "train.eval_batch_size", "train.collective_timeout")


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
        _print_metrics(metrics, f"test metrics ({time.time() - started:.0f} s, run folder {out_dir}):")
    return 0


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
        _print_json({"ok": not problems, "problems": [asdict(p) for p in problems], "summary": summary})
    elif problems:
        rows = [[p.file, p.field or "-", "-" if p.row is None else str(p.row), p.message] for p in problems]
        print(_table(rows, ["FILE", "FIELD", "ROW", "PROBLEM"]))
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {args.path}", file=sys.stderr)
    else:
        print(summary_line(summary))
        if args.config:
            print(f"{args.path}: fits the model of config {args.config}")
    return 1 if problems else 0


def cmd_check_plugin(args: argparse.Namespace) -> int:
    from mtmm_core.testing import check_distribution, find_breaches

    if args.component:
        kind, _, name = args.component.partition(":")
        if not name:
            raise UsageError(f"--component {args.component!r}: write KIND:NAME, e.g. fusion:film")
        reports = [find_breaches(kind, f"{args.distribution}:{name}")]
    else:
        reports = check_distribution(args.distribution)
    if args.json:
        _print_json([{"component": r.label, "ok": r.ok, "breaches": [{"check": c, "problem": p} for c, p in r.breaches],
                      "skipped": [{"check": c, "why": w} for c, w in r.skipped], "passed": r.passed} for r in reports])
    else:
        print("\n".join(str(report) for report in reports))
        broken = sum(not report.ok for report in reports)
        print(f"{len(reports)} component(s) of {args.distribution}: {broken} with breaches", file=sys.stderr)
    return 0 if all(report.ok for report in reports) else 1


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

    checking = commands.add_parser("check-plugin", help="check a distribution's components against their contracts")
    checking.add_argument("distribution", help="the distribution that registers them (see `mtmm plugins`)")
    checking.add_argument("--component", metavar="KIND:NAME", help="check only this one, e.g. fusion:film")
    checking.add_argument("--json", action="store_true", help="machine-readable output")
    checking.set_defaults(run=cmd_check_plugin)

    training = commands.add_parser("train", help="train a model (default: configs/default.yaml on avdigits)")
    training.add_argument("config", nargs="?", help="a config file, or the name of a shipped config")
    training.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    training.add_argument("--data", help="the data set: a registered name or a data folder (docs/data.md)")
    training.add_argument("--out", help="run folder (default runs/<time>)")
    training.add_argument("--resume", metavar="RUN_DIR",
                          help=f"continue an interrupted run (--set may change only {', '.join(RESUMABLE_SETTINGS)})")
    training.add_argument("--force", action="store_true",
                          help="start the run even if --out holds other files (an old run's files are replaced)")
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
    checking.add_argument("--config", help="also check the data against the model of this config "
                                           "(a config file, or the name of a shipped config)")
    checking.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a value of --config, as for mtmm train (repeatable)")
    checking.add_argument("--json", action="store_true", help="machine-readable output")
    checking.set_defaults(run=cmd_data_check)
    return parser


def _one_line(error: BaseException) -> str:
    """An error's message on one line; an ``OSError`` about a file as ``<path>: <reason>``."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        filename = os.fsdecode(error.filename) if isinstance(error.filename, bytes) else error.filename
        return f"{filename}: {error.strerror}"
    if isinstance(error, yaml.YAMLError):
        from mtmm_core.config import yaml_problem

        return f"invalid YAML: {yaml_problem(error)}"
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def _warning_printer(default: Any) -> Any:
    """A ``warnings.showwarning`` that prints mtmm's own warnings (ConfigWarning) as one
    ``mtmm: warning: ...`` line, from rank 0 only, and hands any other warning to ``default``."""
    from mtmm_core.config import ConfigWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, ConfigWarning):
            return default(message, category, filename, lineno, file, line)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mtmm: warning: {message}", file=sys.stderr)

    return show


def check_flags(args: argparse.Namespace) -> None:
    """Command-line values argparse cannot check by type alone; a UsageError names the flag."""
    nproc = getattr(args, "nproc", 1)
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc must be at least 1 (the number of training processes), got {nproc}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mtmm`` command; returns the exit status: 0 on success, 2 for a bad command line,
    config, value or file (one ``mtmm: error:`` line naming it), 1 when a run could not go on
    (RunError, a non-finite loss, an OS error such as a full disk), 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(warnings.showwarning)
            check_flags(args)
            return args.run(args)
    except (RunError, NonFiniteError) as error:
        print(f"mtmm: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except (MtmmError, ValueError, FileNotFoundError, FileExistsError, ImportError, yaml.YAMLError) as error:
        print(f"mtmm: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. a full disk or a permission denied while writing
        print(f"mtmm: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:  # commands other than train, which handles its own
        code = getattr(error, "exit_code", 130)
        if not hasattr(error, "exit_code"):
            print("mtmm: interrupted", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
