"""How the ``mtmm`` command prints: tables that fit the terminal, JSON, and test metrics."""

from __future__ import annotations

import json
import shutil
import textwrap
from typing import Any


def width() -> int:
    return shutil.get_terminal_size((100, 24)).columns


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Rows as aligned columns, the last column wrapped to fit the terminal."""
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers) - 1)]
    indent = sum(widths) + 2 * len(widths)
    room = max(30, width() - indent)
    lines = []
    for row in [headers] + rows:
        first, *rest = textwrap.wrap(str(row[-1]), room) or [""]
        lines.append("  ".join([str(c).ljust(w) for c, w in zip(row, widths)] + [first]).rstrip())
        lines.extend(" " * indent + more for more in rest)
    return "\n".join(lines)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def print_metrics(metrics: dict[str, float], title: str) -> None:
    """Test metrics as a task x metric table."""
    tasks: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        task, _, metric = key.rpartition(".")
        if task:
            tasks.setdefault(task, {})[metric] = value
    print(title)
    rows = [[task, "  ".join(f"{m} {v:.4f}" for m, v in values.items())] for task, values in tasks.items()]
    print(table(rows, ["TASK", "METRICS"]))
