"""`mtmm plot` draws a run's log to a PNG."""

from __future__ import annotations

import json
import random

import pytest

from mtmm_core.cli import main as cli_main
from mtmm_core.plot import plot_run


def write_log(run_dir, epochs: int = 4) -> None:
    lines = []
    for epoch in range(1, epochs + 1):
        lines.append(json.dumps({
            "epoch": epoch,
            "train": {"digit": random.random(), "sum": random.random()},
            "validation": {"digit.accuracy": random.random(), "digit.loss": 1.0, "sum.mae": random.random(), "loss": 2.0},
            "task_weights": {"digit": random.random(), "sum": random.random()},
        }))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    write_log(tmp_path)
    out = plot_run(tmp_path)
    assert out == tmp_path / "training.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_of_a_folder_without_a_log_says_what_is_missing(tmp_path, capsys):
    assert cli_main(["plot", str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
