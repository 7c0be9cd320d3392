"""The example third-party plugin, pip-installed for real, shows up in `mtmm list` and in build_model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mtmm_core
from mtmm_core import plugins

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mtmm-example-plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """pip-install the example plugin (no dependencies, no network) into a fresh target folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )
    assert list(target.glob("mtmm_example_plugin-0.1.0.dist-info"))
    return target


def run_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]))
    return subprocess.run([sys.executable, "-m", "mtmm_core.cli", *args], env=environment,
                          capture_output=True, text=True, check=True)


def test_mtmm_list_shows_the_plugin_components_with_their_distribution(installed_example):
    listed = json.loads(run_cli(installed_example, "list", "--json").stdout)
    found = {(c["kind"], c["name"]): c for c in listed}
    for key in [("encoder", "frame_mlp"), ("fusion", "max")]:
        assert found[key]["distribution"] == "mtmm-example-plugin" and found[key]["version"] == "0.1.0"
    plugins_table = run_cli(installed_example, "plugins").stdout
    assert "mtmm-example-plugin:example" in plugins_table and "loaded" in plugins_table


def test_build_model_uses_the_plugin_components(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    plugins.reset()
    try:
        model = mtmm_core.build_model({
            "dim": 16,
            "encoders": {"audio": {"name": "frame_mlp", "in_features": 13}, "image": {"name": "cnn"}},
            "fusion": {"name": "max"},
            "tasks": {"digit": {"head": "classification", "num_classes": 10}},
        })
        assert type(model.encoders["audio"]).__module__ == "mtmm_example_plugin"
        assert type(model.fusion).__name__ == "MaxPoolFusion"
        inputs = {"audio": torch.randn(4, 11, 13), "image": torch.randn(4, 1, 8, 8)}
        present = {"image": torch.tensor([True, False, True, False])}
        output = model(inputs, {"audio": torch.tensor([11, 3, 5, 1])}, present)
        total, _ = model.compute_loss(output, {"digit": torch.randint(0, 10, (4,))})
        total.backward()
        assert torch.isfinite(total)
    finally:
        sys.modules.pop("mtmm_example_plugin", None)


def test_mtmm_check_plugin_passes_the_example_and_names_its_components(installed_example):
    result = run_cli(installed_example, "check-plugin", "mtmm-example-plugin", "--json")
    reports = {r["component"]: r for r in json.loads(result.stdout)}
    assert set(reports) == {"encoder 'frame_mlp' from mtmm-example-plugin 0.1.0",
                            "fusion 'max' from mtmm-example-plugin 0.1.0"}
    assert all(r["ok"] and not r["skipped"] and len(r["passed"]) >= 10 for r in reports.values()), reports
