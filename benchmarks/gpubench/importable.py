"""Making ``mtmm_kernels``, ``mtmm_core`` and the built-in plugins importable from this checkout.

``gpu_suite.py`` calls ``ensure_importable()`` before it imports anything else of this package:
on a bare GPU machine nothing of mtmm is installed. Standard library only.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.metadata
import importlib.util
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
IMPORT_INFO: dict[str, Any] = {}  # what ensure_importable found and did (filled in place; the sections read it)


def _entry_points_from_pyproject() -> str:
    """The ``[project.entry-points.mtmm]`` table of pyproject.toml as an entry_points.txt section."""
    lines, inside = ["[mtmm]"], False
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped == "[project.entry-points.mtmm]"
            continue
        match = re.match(r'^([A-Za-z0-9_.-]+)\s*=\s*"([^"]+)"', stripped) if inside else None
        if match:
            lines.append(f"{match.group(1)} = {match.group(2)}")
    return "\n".join(lines) + "\n"


def ensure_importable() -> dict[str, Any]:
    """Make ``mtmm_kernels``, ``mtmm_core`` and the built-in plugins importable from this checkout.

    On a machine where mtmm is not installed (a bare GPU machine), a temporary folder gets a
    link ``mtmm_kernels -> kernels/`` and a ``mtmm-<version>.dist-info`` holding pyproject's
    entry points (the registry finds the built-in components through them); it goes first on
    ``sys.path`` and on the pytest subprocess's ``PYTHONPATH``. Nothing is installed.
    """
    info: dict[str, Any] = {"root": str(ROOT)}
    for path in (str(BENCH), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
    shim: Path | None = None

    def shim_dir() -> Path:
        nonlocal shim
        if shim is None:
            shim = Path(tempfile.mkdtemp(prefix="mtmm_gpu_suite_"))
            atexit.register(shutil.rmtree, str(shim), True)
        return shim

    if importlib.util.find_spec("mtmm_kernels") is None:
        target = shim_dir() / "mtmm_kernels"
        try:
            target.symlink_to(ROOT / "kernels", target_is_directory=True)
        except OSError:
            shutil.copytree(ROOT / "kernels", target)
        info["mtmm_kernels"] = "shim (kernels/ linked as mtmm_kernels)"
    else:
        info["mtmm_kernels"] = "installed"
    if not list(importlib.metadata.entry_points(group="mtmm")):
        version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
        version_text = version.group(1) if version else "0"
        dist = shim_dir() / f"mtmm-{version_text}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mtmm\nVersion: {version_text}\n")
        (dist / "entry_points.txt").write_text(_entry_points_from_pyproject())
        info["entry_points"] = "shim (pyproject's entry points in a temporary dist-info)"
    else:
        info["entry_points"] = "installed"
    extra = [str(ROOT)]
    if shim is not None:
        sys.path.insert(0, str(shim))
        extra.insert(0, str(shim))
        importlib.invalidate_caches()
    info["pythonpath"] = extra
    IMPORT_INFO.clear()
    IMPORT_INFO.update(info)
    return IMPORT_INFO
