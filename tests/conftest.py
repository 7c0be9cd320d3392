"""Shared fixtures: a clean plugin state per test, and fake installed distributions."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest
import torch

# Without a GPU, the Triton kernels are tested under Triton's interpreter. The variable must be
# set before any Triton kernel module is imported, so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mtmm_core import plugins  # noqa: E402

PLUGIN_VARIABLES = ("MTMM_LOAD_PLUGINS", "MTMM_DISABLE_PLUGINS", "MTMM_STRICT_PLUGINS")


@pytest.fixture(autouse=True)
def clean_plugin_state(monkeypatch: pytest.MonkeyPatch):
    """Every test starts and ends with nothing loaded and no plugin environment variables."""
    for variable in PLUGIN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def small_data():
    """Register ``small_avdigits`` (tests/small_data.py) as an in-process data-set plugin."""
    from small_data import SmallDataPlugin

    name = plugins.register_plugin(SmallDataPlugin(), name="test-small-data")
    yield
    plugins.unregister_plugin(name)


@pytest.fixture
def make_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Write a real installed distribution (module + dist-info with mtmm entry points) onto sys.path.

    Returns the module name, unique per test so that imports never leak between tests.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(distribution: str, source: str, version: str = "1.0.0", entry_name: str = "plugin") -> str:
        module = f"{distribution.replace('-', '_')}_{tmp_path.name}".replace("-", "_")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[mtmm]\n{entry_name} = {module}\n")
        created.append(module)
        importlib.invalidate_caches()
        return module

    yield make
    for module in created:
        sys.modules.pop(module, None)
