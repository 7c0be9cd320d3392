"""Checkpoints are atomic and never unpickle code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from mtmm_core.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip_of_tensors_and_plain_values(tmp_path):
    state = {"model": {"w": torch.randn(3, 4)}, "epoch": 4, "history": [0.5, 0.25], "name": "run"}
    save_checkpoint(state, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    torch.testing.assert_close(loaded["model"]["w"], state["model"]["w"])
    assert loaded["epoch"] == 4 and loaded["history"] == [0.5, 0.25]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"epoch": 2, "bad": Unsaveable()}, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > " + os.environ.get("MTMM_TEST_MARKER", "/dev/null"),))


def test_loading_refuses_pickled_code(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("MTMM_TEST_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "payload": Payload()}, path, pickle_module=pickle)
    with pytest.raises(ValueError, match="not a safe mtmm checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
