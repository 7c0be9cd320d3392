"""The ``mtmm`` command: one module per group of subcommands, each adding its own parsers.

``components`` (list, plugins, describe, check-plugin), ``train``, ``runs`` (evaluate, predict,
plot), ``data`` (data check) and ``tune``. :func:`main` maps mtmm's errors to one ``mtmm: error:`` line
and an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Sequence

import yaml

from mtmm_core.cli import components, data, export, runs, train, tune
from mtmm_core.errors import MtmmError, NonFiniteError, RunError, UsageError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mtmm`` command."""
    parser = argparse.ArgumentParser(prog="mtmm", description="Multimodal, multitask learning from registry names.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (components, train, runs, data, tune, export):
        group.add_commands(commands)
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
