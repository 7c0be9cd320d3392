"""The Python API: mtmm_core.train(config, **overrides) -> Run, and mtmm_core.load_run(path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mtmm_core
from mtmm_core.api import _dotted
from mtmm_core.cli import main as cli_main
from small_data import SMALL_MODEL

SMALL = {"data": {"name": "small_avdigits", "train_rows": 128}, "train": {"epochs": 2, "threads": 1}}


def _small_overrides() -> dict:
    """tests/small_data.py's small model, as dotted keyword overrides."""
    return dict(override.split("=", 1) for override in SMALL_MODEL)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_overrides_become_the_set_keys_they_stand_for():
    assert _dotted({"train": {"epochs": 2, "lr": 1e-3}, "model.fusion.name": "gated"}) == [
        "train.epochs=2", "train.lr=0.001", "model.fusion.name=\"gated\""]
    assert _dotted({"model": {"encoders": {"image": {"channels": [8, 16]}}}}) == [
        "model.encoders.image.channels=[8, 16]"]


def test_train_returns_the_run_and_load_run_reopens_it(small_data, tmp_path, threads):
    run = mtmm_core.train("default", out=tmp_path / "run", **SMALL, **{"model.fusion.name": "concat"},
                          **{key: json.loads(value) if value[0] in "[0123456789" or value in ("false", "true")
                             else value for key, value in _small_overrides().items()})
    assert run.path == tmp_path / "run" and run.config["model"]["fusion"] == {"name": "concat"}
    assert run.config["train"]["epochs"] == 2 and run.config["model"]["dim"] == 32
    assert [record["epoch"] for record in run.history] == [1, 2]
    assert run.test_metrics == json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert not run.model.training

    again = mtmm_core.load_run(tmp_path / "run")
    assert again.best_epoch == run.best_epoch in (1, 2)
    assert again.history == run.history and again.test_metrics == run.test_metrics
    # the reopened model scores the test split as the run did, and predicts as `mtmm predict` writes
    assert again.evaluate() == pytest.approx(run.test_metrics, rel=1e-6)
    image_only = again.evaluate(modalities=["image"])
    assert image_only["image_digit.accuracy"] == pytest.approx(run.test_metrics["image_digit.accuracy"], abs=0.5)
    predictions = again.predict("small_avdigits")  # as registered, like --data: 512 training rows
    assert cli_main(["predict", str(tmp_path / "run"), "--data", "small_avdigits", "--out",
                     str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as written:
        assert set(written.files) == set(predictions)
        for name in written.files:
            if written[name].dtype.kind == "f":
                np.testing.assert_allclose(written[name], predictions[name], rtol=1e-5, atol=1e-6)
            else:
                assert (written[name] == predictions[name]).all()
    for name, parameter in again.model.state_dict().items():
        assert torch.equal(parameter, run.model.state_dict()[name]), name


def test_a_mapping_config_may_extend_a_shipped_one_and_bad_keys_are_named(small_data, tmp_path, threads):
    config = {"extends": "default", "model": {"fusion": {"name": "concat"}}, **SMALL}
    run = mtmm_core.train(config, out=tmp_path / "run", train={"epochs": 1, "threads": 1, "progress": False},
                          **{"model.dim": 16})
    assert run.config["model"]["encoders"]["audio"]["name"] == "sequence_transformer"  # from default.yaml
    assert run.model.encoders["image"].out_dim == 16
    assert len(run.history) == 1
    with pytest.raises(mtmm_core.SpecError, match=r"train\.epocs: unknown setting; did you mean 'epochs'"):
        mtmm_core.train("default", out=tmp_path / "bad", train={"epocs": 1})
    assert not (tmp_path / "bad").exists()


def test_on_epoch_end_sees_each_saved_record_and_can_stop_the_run(small_data, tmp_path, threads):
    seen = []

    def stop_after_first(record):
        seen.append(record)
        assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == record["epoch"]  # already saved
        raise KeyError("enough")

    with pytest.raises(KeyError, match="enough"):
        mtmm_core.train("default", out=tmp_path / "run", on_epoch_end=stop_after_first, **SMALL,
                        **{"model.fusion.name": "concat", "model.dim": 16})
    assert [record["epoch"] for record in seen] == [1]
    assert not (tmp_path / "run" / ".lock").exists()  # the run folder was released
    resumed = mtmm_core.train(resume=tmp_path / "run")  # and the run continues from its checkpoint
    assert [record["epoch"] for record in resumed.history] == [1, 2]


def test_resume_takes_no_other_settings(tmp_path):
    with pytest.raises(mtmm_core.MtmmError, match="resume continues a run with its own config.yaml"):
        mtmm_core.train("default", resume=tmp_path)
