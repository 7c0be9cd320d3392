"""The built wheel works without a clone: the shipped configs and avdigits are package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The project built as a wheel (no network, no build isolation) and unpacked into a target folder."""
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and mtmm.egg-info beside the sources, and an
    # egg-info in the repository would shadow the installed entry points for anything run from there.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "runs",
                                                                ".pytest_cache", ".benchmarks"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(out / "dist")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((out / "dist").glob("mtmm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mtmm_core/configs/default.yaml" in names and "mtmm_plugins/datasets/avdigits.npz" in names
    zipfile.ZipFile(wheel).extractall(out / "site")
    return out / "site"


def run_outside_the_clone(site: Path, tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with the unpacked wheel first on sys.path, from a folder outside the repository."""
    environment = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, env=environment, timeout=300)


def test_the_wheel_ships_the_configs_and_extends_resolves_a_shipped_name(installed_wheel, tmp_path):
    (tmp_path / "mine.yaml").write_text("extends: gated\ntrain: {epochs: 3}\n")
    done = run_outside_the_clone(installed_wheel, tmp_path, f"""
        import mtmm_core, mtmm_core.config as c
        assert mtmm_core.__file__.startswith({str(installed_wheel)!r}), mtmm_core.__file__
        assert c.CONFIG_DIR == c.Path({str(installed_wheel)!r}).resolve() / "mtmm_core" / "configs", c.CONFIG_DIR
        shipped = sorted(p.stem for p in c.CONFIG_DIR.glob("*.yaml"))
        assert "default" in shipped and "gated" in shipped, shipped
        assert c.load_config()["data"]["name"] == "avdigits"
        mine = c.load_config("mine.yaml")
        assert mine["model"]["fusion"]["name"] == "gated" and mine["train"]["epochs"] == 3
        print("ok", len(shipped))
    """)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]
    assert int(done.stdout.split()[1]) == len(list((ROOT / "configs").glob("*.yaml")))


def test_every_python_package_of_the_tree_is_in_the_wheel_list():
    """pyproject lists its packages by hand (mtmm_kernels maps to kernels/): a new subpackage left out of
    the list would be missing from the wheel, so every folder with an __init__.py must be listed."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for top in ("mtmm_core", "mtmm_plugins")
             for init in (root / top).rglob("__init__.py")}
    found |= {"mtmm_kernels" + "".join("." + part for part in init.parent.relative_to(root / "kernels").parts)
              for init in (root / "kernels").rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"


def test_the_kernels_source_folder_imported_as_kernels_stands_in_for_mtmm_kernels() -> None:
    """From the clone's root (on sys.path with ``python -c`` or ``python -m pytest``) ``import kernels``
    finds the source folder, as transformers' probe for Hugging Face's ``kernels`` does: it must be the
    installed ``mtmm_kernels``, not a second copy registering the operators again."""
    import importlib.util

    code = "import kernels, mtmm_kernels, torch; assert kernels is mtmm_kernels; torch.ops.mtmm.cross_modal_attention\n"
    if importlib.util.find_spec("transformers") is not None:
        code += "import mtmm_core; from transformers import BertConfig, BertModel; BertModel(BertConfig(hidden_size=8, " \
                "num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, vocab_size=20))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
