"""Data-parallel training in 2 CPU processes (gloo) matches one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SMALL = ["--set", "model.dim=32", "--set", "model.encoders.image.channels=[16, 32]",
         "--set", "model.encoders.audio.depth=1", "--set", "model.modality_dropout=0.0",
         "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.progress=false"]


def train(out_dir, *extra: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "mtmm_core.cli", "train", *SMALL, "--out", str(out_dir), *extra],
                          capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out_dir / "test_metrics.json").read_text())


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups are tested on Linux and macOS")
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    single = train(tmp_path / "single")
    double = train(tmp_path / "double", "--nproc", "2")
    for key in ("image_digit.accuracy", "audio_digit.accuracy", "match.accuracy"):
        assert abs(single[key] - double[key]) < 0.02, (key, single[key], double[key])
    assert abs(single["digit_sum.mae"] - double["digit_sum.mae"]) < 0.15
    assert single["image_digit.accuracy"] > 0.3  # it learned: chance is 0.1
    log = [json.loads(line) for line in (tmp_path / "double" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2]  # one writer: rank 0
    assert sorted(p.name for p in (tmp_path / "double").iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "model.yaml", "test_metrics.json"]


def test_a_two_process_run_resumes_with_two_processes_only(tmp_path):
    first = train(tmp_path / "run", "--nproc", "2", "--set", "train.epochs=1")
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    resumed = subprocess.run([sys.executable, "-m", "mtmm_core.cli", "train", "--nproc", "2",
                              "--resume", str(tmp_path / "run")], capture_output=True, text=True, env=environment,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text()) == first
    alone = subprocess.run([sys.executable, "-m", "mtmm_core.cli", "train", "--resume", str(tmp_path / "run")],
                           capture_output=True, text=True, env=environment, timeout=600)
    assert alone.returncode == 2 and "trained by 2 processes; resume it with as many" in alone.stderr
