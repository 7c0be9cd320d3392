"""``mtmm list``, ``plugins``, ``describe`` and ``check-plugin``: what is registered, and whether it keeps its contract."""

from __future__ import annotations

import argparse
import sys
import textwrap

from mtmm_core import plugins
from mtmm_core.cli._output import print_json, table, width
from mtmm_core.components import describe, list_components
from mtmm_core.errors import UsageError
from mtmm_core.registry import KINDS, normalize_kind


def cmd_list(args: argparse.Namespace) -> int:
    kind = normalize_kind(args.kind) if args.kind else None
    components = list_components(kind, args.pattern)
    if args.json:
        print_json([{"kind": c.kind, "name": c.name, "qualified_name": c.qualified_name,
                      "distribution": c.distribution, "version": c.version, "description": c.description}
                     for c in components])
        return 0
    if not components:
        print(f"no {kind or 'component'} matches {args.pattern!r}", file=sys.stderr)
        return 1
    names = [(c.kind, c.name) for c in components]
    rows = [[c.kind, c.qualified_name if names.count((c.kind, c.name)) > 1 else c.name,
             f"{c.distribution} {c.version}".strip(), c.description] for c in components]
    print(table(rows, ["KIND", "NAME", "DISTRIBUTION", "DESCRIPTION"]))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    infos = plugins.plugin_infos()
    if args.json:
        print_json([vars(info) for info in infos])
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
    print(table(rows, ["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "HOOKS", "COMPONENTS / ERROR"]))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    info = describe(args.kind, args.name)
    if args.json:
        print_json(info)
        return 0
    print(f"{info['kind']} {info['name']}  ({info['distribution']} {info['version']}, plugin {info['plugin']})")
    print(f"  {info['description']}")
    print("parameters:")
    rows = []
    for p in info["parameters"]:
        default = "required" if p["required"] else f"default {p['default']!r}"
        if p["set_by_mtmm"]:
            default = "set by mtmm"
        elif p.get("default_from"):
            default = f"{p['default_from']} (the spec's value; {p['default']!r} only if it sets none)"
        rows.append(["  " + p["name"], p["type"], default])
    print(table(rows, ["  NAME", "TYPE", "DEFAULT"]) if rows else "  (none)")
    inherited = [p for p in info["parameters"] if p.get("default_from")]
    for p in inherited:
        print(textwrap.fill(f"{p['name']}: a config's {p['default_from']} (e.g. 64 in configs/default.yaml) sets "
                            f"it for every {info['kind']} whose own entry does not; `{p['name']}: N` in this "
                            f"{info['kind']}'s entry wins over both", width()))
    return 0


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
        print_json([{"component": r.label, "ok": r.ok, "breaches": [{"check": c, "problem": p} for c, p in r.breaches],
                      "skipped": [{"check": c, "why": w} for c, w in r.skipped], "passed": r.passed} for r in reports])
    else:
        print("\n".join(str(report) for report in reports))
        broken = sum(not report.ok for report in reports)
        print(f"{len(reports)} component(s) of {args.distribution}: {broken} with breaches", file=sys.stderr)
    return 0 if all(report.ok for report in reports) else 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``list``, ``plugins``, ``describe`` and ``check-plugin`` to the ``mtmm`` parser."""
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
