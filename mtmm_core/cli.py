"""The ``mtmm`` command line: ``list``, ``plugins`` and ``describe``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from typing import Any, Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mtmm`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (MtmmError, ValueError) as error:
        print(f"mtmm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
