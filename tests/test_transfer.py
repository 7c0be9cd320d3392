"""Transfer between runs: init_from with prefixes, the load report, freezing, unfreezing and resuming."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
import yaml

import mtmm_core
from mtmm_core.checkpoint import load_checkpoint, save_checkpoint
from mtmm_core.cli import main as cli_main
from mtmm_core.config import load_config
from mtmm_core.spec import build_model
from mtmm_core.interrupts import TrainingInterrupted
from mtmm_core.trainer import Trainer
from mtmm_core.transfer import freeze, load_weights, transfer_settings
from small_data import FewRows, small_config

def first_epoch_train_loss(run_dir, task: str) -> float:
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    return first["train"][task]


def test_a_transferred_image_encoder_starts_the_four_task_run_with_a_lower_image_digit_loss(small_data, tmp_path,
                                                                                          capsys):
    fast = ("train.lr=0.01", "train.batch_size=32")
    pretrain = small_config("train.epochs=3", "data.train_rows=1024", *fast)
    pretrain["model"]["tasks"] = {"image_digit": {"head": "classification", "num_classes": 10}}
    Trainer(pretrain, tmp_path / "pretrain").run()
    capsys.readouterr()

    shortened = ("train.epochs=1", "data.train_rows=512", *fast)  # the four-task run, cut to its first epoch
    fresh = Trainer(small_config(*shortened), tmp_path / "fresh")
    assert len(fresh.model.tasks) == 4
    fresh.run()
    transferred = Trainer(small_config(*shortened, f"transfer.init_from={tmp_path / 'pretrain'}",
                                 "transfer.init_prefixes=[encoders.image]"), tmp_path / "transferred")
    report = capsys.readouterr().err
    pretrained = load_checkpoint(tmp_path / "pretrain" / "best.pt")["model"]
    image_tensors = [name for name in pretrained if name.startswith("encoders.image.")]
    assert f"loaded {len(image_tensors)} tensors under encoders.image" in report
    for name in image_tensors:
        torch.testing.assert_close(transferred.model.state_dict()[name], pretrained[name])
    transferred.run()

    fresh_loss = first_epoch_train_loss(tmp_path / "fresh", "image_digit")
    transferred_loss = first_epoch_train_loss(tmp_path / "transferred", "image_digit")
    assert transferred_loss < fresh_loss - 0.2, (transferred_loss, fresh_loss)
    saved = yaml.safe_load((tmp_path / "transferred" / "config.yaml").read_text())
    assert saved["transfer"]["init_prefixes"] == ["encoders.image"]


def small_spec(image_channels: list[int], tasks: dict | None = None) -> dict:
    return {
        "dim": 16,
        "encoders": {"image": {"name": "cnn", "channels": image_channels},
                     "audio": {"name": "sequence_transformer", "in_features": 13, "depth": 1}},
        "fusion": {"name": "concat"},
        "tasks": tasks or {"digit": {"head": "classification", "num_classes": 10}},
    }


def fake_run(run_dir, model, name: str = "best.pt") -> None:
    save_checkpoint({"model": model.state_dict(), "epoch": 1}, run_dir / name)


def test_a_shape_mismatch_is_reported_with_both_shapes_and_leaves_those_weights_untouched(tmp_path):
    torch.manual_seed(0)
    source = build_model(small_spec([8, 16]))
    fake_run(tmp_path / "source", source)
    target = build_model(small_spec([8, 24]))
    before = {name: tensor.clone() for name, tensor in target.state_dict().items()}

    report = load_weights(target, tmp_path / "source", ["encoders.image"])
    text = str(report)
    skipped = dict(report.skipped)
    assert skipped  # the second convolution and everything after it changed shape
    for name, reason in skipped.items():
        assert name.startswith("encoders.image.")
        assert reason == (f"shape {list(source.state_dict()[name].shape)} in the checkpoint vs "
                          f"{list(target.state_dict()[name].shape)} in this model")
        assert f"{name}: {reason}" in text
        torch.testing.assert_close(target.state_dict()[name], before[name])  # untouched
    assert report.loaded and all(name.startswith("encoders.image.") for name in report.loaded)
    for name in report.loaded:
        torch.testing.assert_close(target.state_dict()[name], source.state_dict()[name])
    for name, tensor in target.state_dict().items():  # nothing outside the prefix moved
        if not name.startswith("encoders.image."):
            torch.testing.assert_close(tensor, before[name])
    assert text.startswith(f"init_from {tmp_path / 'source' / 'best.pt'}: loaded {len(report.loaded)} tensors "
                           "under encoders.image")


def test_tensors_missing_in_this_model_are_reported_and_last_pt_is_the_fallback(tmp_path):
    tasks = {"digit": {"head": "classification", "num_classes": 10}, "match": {"head": "binary"}}
    source = build_model(small_spec([8, 16], tasks))
    fake_run(tmp_path / "source", source, name="last.pt")
    target = build_model(small_spec([8, 16], {"digit": tasks["digit"], "sum": {"head": "regression"}}))
    report = load_weights(target, tmp_path / "source")
    assert report.source.name == "last.pt"
    skipped = dict(report.skipped)
    assert skipped and all(name.startswith("heads.match.") for name in skipped)
    assert set(skipped.values()) == {"missing in this model"}
    assert report.fresh and all(name.startswith("heads.sum.") for name in report.fresh)
    assert "encoders.image" in str(report) and "heads.match" in str(report)


def test_a_transfer_that_loads_nothing_is_refused_naming_the_run_and_prefixes(tmp_path):
    fake_run(tmp_path / "source", build_model(small_spec([8, 16])))
    target = build_model(small_spec([4, 4]))
    with pytest.raises(ValueError, match=r"init_from .*source: nothing to load under the prefixes encoders\.text"):
        load_weights(target, tmp_path / "source", ["encoders.text"])
    with pytest.raises(ValueError, match=r"(?s)nothing to load under the prefixes encoders\.image\.features, "
                                         r"encoders\.text.*shape \[8, 1, 3, 3\] in the checkpoint vs \[4, 1, 3, 3\]"):
        load_weights(target, tmp_path / "source", ["encoders.image.features", "encoders.text"])  # shapes differ
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no best.pt or last.pt"):
        load_weights(target, tmp_path / "empty")


def test_freeze_names_a_prefix_that_matches_nothing():
    model = build_model(small_spec([8, 16]))
    with pytest.raises(ValueError, match=r"'encoders\.imag' matches no parameter.*encoders\.image"):
        freeze(model, ["encoders.imag"])
    frozen = freeze(model, ["encoders.image"])
    assert frozen and all(not p.requires_grad for _, p in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoders.image."))


def test_transfer_settings_are_validated_by_key():
    assert transfer_settings({"freeze": "encoders.image"}).freeze == ["encoders.image"]
    with pytest.raises(mtmm_core.SpecError, match=r"^transfer\.freez: unknown setting; did you mean 'freeze'"):
        load_config(None, ["transfer.freez=[encoders.image]"])
    with pytest.raises(mtmm_core.SpecError, match=r"^transfer\.unfreeze_at_epoch: has no effect without"):
        load_config(None, ["transfer.unfreeze_at_epoch=2"])
    with pytest.raises(mtmm_core.SpecError, match=r"^transfer\.unfreeze_at_epoch: expected an epoch number"):
        load_config(None, ["transfer.freeze=[fusion]", "transfer.unfreeze_at_epoch=0"])
    assert "transfer" not in load_config(None)


def test_cli_init_from_sets_the_transfer_section(monkeypatch, tmp_path):
    seen = {}

    class Recorder:
        def __init__(self, config, out_dir, resume=False, force=False):
            seen["config"] = config

        def run(self):
            return {}

    monkeypatch.setattr("mtmm_core.trainer.Trainer", Recorder)
    assert cli_main(["train", "--init-from", "runs/2024", "--set", "transfer.init_prefixes=[encoders.image]",
                     "--out", str(tmp_path / "run")]) == 0
    assert seen["config"]["transfer"]["init_from"] == "runs/2024"
    assert seen["config"]["transfer"]["init_prefixes"] == ["encoders.image"]


FREEZE = ("train.epochs=3", "data.train_rows=128", "transfer.freeze=[encoders.image]",
          "transfer.unfreeze_at_epoch=2")


def test_frozen_parameters_get_no_optimizer_state_until_they_are_unfrozen(small_data, tmp_path):
    trainer = Trainer(small_config(*FREEZE), tmp_path / "run")
    image = {name: p for name, p in trainer.model.named_parameters() if name.startswith("encoders.image.")}
    before = {name: p.detach().clone() for name, p in image.items()}
    assert not any(p.requires_grad for p in image.values())

    trainer._train_epoch()
    trainer._end_epoch()  # epoch 1: frozen
    for name, parameter in image.items():
        assert torch.equal(parameter, before[name]) and parameter not in trainer.optimizer.state
    trainer._train_epoch()  # epoch 2: trained again
    assert all(parameter in trainer.optimizer.state for parameter in image.values())
    assert any(not torch.equal(parameter, before[name]) for name, parameter in image.items())


def test_a_run_interrupted_after_unfreezing_resumes_to_the_same_metrics(small_data, tmp_path, monkeypatch):
    straight = Trainer(small_config(*FREEZE), tmp_path / "straight").run()

    calls = {"n": 0}
    original = FewRows.batch

    def interrupt_in_epoch_2(self, rows):
        if self.rows == 128 and len(rows) == 64:
            calls["n"] += 1
            if calls["n"] == 3:  # epoch 2, first step: after unfreezing; it stops when the step is done
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, rows)

    monkeypatch.setattr(FewRows, "batch", interrupt_in_epoch_2)
    with pytest.raises(TrainingInterrupted):
        Trainer(small_config(*FREEZE), tmp_path / "resumed").run()
    monkeypatch.setattr(FewRows, "batch", original)
    state = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert state["epoch"] == 1 and state["step_in_epoch"] == 1  # interrupted after unfreezing
    resumed = Trainer(small_config(*FREEZE), tmp_path / "resumed", resume=True).run()
    assert json.dumps(resumed, sort_keys=True) == json.dumps(straight, sort_keys=True)


def test_soft_sharing_logs_its_penalty(small_data, tmp_path):
    cfg = small_config("train.epochs=1", "data.train_rows=64")
    cfg["model"]["architecture"] = {"name": "soft_sharing", "hidden": 16, "depth": 1, "coupling": 0.01}
    Trainer(cfg, tmp_path / "run").run()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["regularization"] > 0
