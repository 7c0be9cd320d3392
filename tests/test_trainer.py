"""The trainer on avdigits: it learns, resumes exactly, stops on a non-finite loss, evaluates subsets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import mtmm_core
from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.cli import main as cli_main
from mtmm_core.config import load_config
from mtmm_core.trainer import NonFiniteLossError, Trainer
from mtmm_plugins.weightings import BUILTIN_WEIGHTINGS
from small_data import FewRows, small_config


def test_a_short_run_learns_well_above_chance_and_writes_its_run_folder(small_data, tmp_path):
    metrics = Trainer(small_config("train.epochs=5", "data.train_rows=2100", "train.lr=0.003"), tmp_path / "run").run()
    assert metrics["image_digit.accuracy"] > 0.4 and metrics["audio_digit.accuracy"] > 0.3  # chance: 0.1
    assert metrics["digit_sum.mae"] < 3.0  # predicting the mean gives about 3.3
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5]
    assert set(lines[-1]["task_weights"]) == {"image_digit", "audio_digit", "match", "digit_sum"}
    written = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert json.dumps(written, sort_keys=True) == json.dumps(metrics, sort_keys=True)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 5 and "optimizer" in state and "scheduler" in state


def test_a_run_killed_mid_step_resumes_from_the_last_commit_to_the_same_metrics(small_data, tmp_path, monkeypatch,
                                                                                 capsys):
    """A KeyboardInterrupt raised inside a step (not a signal: tests/test_interrupts.py covers those) saves
    nothing; the epoch-1 commit is the resume point."""
    overrides = ("train.epochs=2", "data.train_rows=384", "model.modality_dropout=0.3")
    straight = Trainer(small_config(*overrides), tmp_path / "straight").run()

    calls = {"n": 0}
    original = FewRows.batch

    def interrupt_at_step_9(self, rows):
        if len(rows) == 64 and self.rows == 384:
            calls["n"] += 1
            if calls["n"] == 9:  # epoch 2, third step
                raise KeyboardInterrupt
        return original(self, rows)

    monkeypatch.setattr(FewRows, "batch", interrupt_at_step_9)
    with pytest.raises(KeyboardInterrupt):
        Trainer(small_config(*overrides), tmp_path / "resumed").run()
    monkeypatch.setattr(FewRows, "batch", original)
    state = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    capsys.readouterr()
    resumed = Trainer(small_config(*overrides), tmp_path / "resumed", resume=True).run()
    assert json.dumps(resumed, sort_keys=True) == json.dumps(straight, sort_keys=True)
    assert f"resuming {tmp_path / 'resumed'} at the start of epoch 2/" in capsys.readouterr().err


def test_a_non_finite_loss_stops_naming_the_task_and_keeps_the_last_good_checkpoint(small_data, tmp_path,
                                                                                   monkeypatch):
    trainer = Trainer(small_config("train.epochs=2", "data.train_rows=128"), tmp_path / "run")
    original = FewRows.batch
    calls = {"n": 0}

    def poisoned(self, rows):
        batch = original(self, rows)
        if self.rows == 128:
            calls["n"] += 1
            if calls["n"] == 3:  # epoch 2
                batch.targets["digit_sum"][0] = float("nan")
        return batch

    monkeypatch.setattr(FewRows, "batch", poisoned)
    with pytest.raises(NonFiniteLossError, match="task 'digit_sum' is not finite at epoch 2"):
        trainer.run()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_evaluate_with_a_subset_of_modalities_degrades_without_failing(small_data, tmp_path, capsys):
    Trainer(small_config("train.epochs=2", "data.train_rows=256"), tmp_path / "run").run()
    capsys.readouterr()
    assert cli_main(["evaluate", str(tmp_path / "run"), "--modalities", "image", "--json"]) == 0
    image_only = json.loads(capsys.readouterr().out)
    assert 0.0 <= image_only["audio_digit.accuracy"] <= 1.0 and np.isfinite(image_only["loss"])


def test_predict_writes_every_sample_of_the_data_set(small_data, tmp_path, capsys):
    Trainer(small_config("train.epochs=1", "data.train_rows=128"), tmp_path / "run").run()
    out = tmp_path / "predictions.npz"
    assert cli_main(["predict", str(tmp_path / "run"), "--data", "small_avdigits", "--out", str(out)]) == 0
    with np.load(out) as saved:
        total = 512 + 192 + 192  # the data set as registered: its default train_rows
        assert len(saved["split"]) == total and set(saved["split"]) == {"train", "validation", "test"}
        assert saved["image_digit"].shape == (total, 10) and saved["image_digit.label"].shape == (total,)
        assert ((saved["match.probability"] >= 0) & (saved["match.probability"] <= 1)).all()
        assert saved["digit_sum"].shape == (total,) and np.isfinite(saved["digit_sum"]).all()
        # .label is the predicted class, .probability the sigmoid of the logits (docs/runs.md's table)
        assert (saved["image_digit.label"] == saved["image_digit"].argmax(axis=1)).all()
        logits = saved["match"].astype(np.float64)
        np.testing.assert_allclose(saved["match.probability"], 1 / (1 + np.exp(-logits)), rtol=1e-6)
        assert list(saved["split"][:1]) == ["train"] and (saved["row"][:512] == np.arange(512)).all()


def test_invalid_configs_name_the_key():
    with pytest.raises(mtmm_core.SpecError, match=r"^train\.epocs: unknown setting; did you mean 'epochs'"):
        load_config(None, ["train.epocs=3"])
    with pytest.raises(mtmm_core.SpecError, match=r"^train\.lr: expected float, got str"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(mtmm_core.SpecError, match="^modle: unknown section; did you mean 'model'"):
        load_config(None, ["modle.dim=3"])


@pytest.mark.parametrize("weighting", sorted(BUILTIN_WEIGHTINGS))
def test_every_weighting_trains_through_the_trainer(small_data, tmp_path, weighting):
    overrides = ["train.epochs=1", "data.train_rows=128", f"model.weighting.name={weighting}"]
    if weighting == "static":
        overrides.append("model.weighting.weights=[1.0, 1.0, 1.0, 0.5]")
    metrics = Trainer(small_config(*overrides), tmp_path / "run").run()
    assert all(np.isfinite(v) for k, v in metrics.items() if not k.endswith("auroc"))
    assert torch.isfinite(load_checkpoint(tmp_path / "run" / "best.pt")["model"]["fusion.output.1.weight"]).all()


def test_a_config_naming_tasks_the_data_set_lacks_is_refused_by_name(small_data, tmp_path):
    cfg = small_config("train.epochs=1")
    cfg["model"]["tasks"]["colour"] = {"head": "classification", "num_classes": 3}
    with pytest.raises(mtmm_core.SpecError, match=r"^model\.tasks\.colour: the data set has no task 'colour'"):
        Trainer(cfg, tmp_path / "run")


def test_epochs_are_mirrored_to_tensorboard_when_it_is_installed(small_data, tmp_path, monkeypatch):
    written = []

    class RecordingWriter:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed",))

    monkeypatch.setattr("mtmm_core.trainer.tensorboard_writer_class", lambda: RecordingWriter)
    Trainer(small_config("train.epochs=2", "data.train_rows=128"), tmp_path / "run").run()
    assert written[0] == ("dir", str(tmp_path / "run" / "tensorboard"))
    assert written[-1] == ("closed",)
    tags = {entry[0] for entry in written[1:-1]}
    assert {"train/image_digit", "validation/match.accuracy", "task_weights/digit_sum", "lr"} <= tags
    assert {entry[2] for entry in written[1:-1]} == {1, 2}


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(small_data, tmp_path, capsys):
    # lr 0: nothing changes, so the validation loss never improves on epoch 1
    Trainer(small_config("train.epochs=6", "data.train_rows=128", "train.lr=0.0", "train.patience=2"), tmp_path / "run").run()
    assert re.search(r"early stopping after epoch 3/6: validation loss has not improved for 2 epochs \(train.patience 2\); "
                     r"best \S+ at epoch 1, whose weights \(best.pt\) are tested", capsys.readouterr().err)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1


def test_cpu_threads_follow_the_setting_then_omp_then_this_process_share_of_its_cores(monkeypatch):
    from mtmm_core.trainer import cpu_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads(3) == 3
    assert cpu_threads(0) == 6  # the cores this process may use, not the machine's
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cpu_threads(0) == 1  # 6 cores shared by 4 processes
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads(0) == 2 and cpu_threads(5) == 5


def test_the_run_says_its_threads_and_train_threads_sets_them(small_data, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        Trainer(small_config("train.epochs=1", "data.train_rows=64", "train.threads=1"), tmp_path / "run").run()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    header = " ".join(capsys.readouterr().err.split())  # the header wraps at 80 columns
    assert re.search(r"run folder \S+run device cpu 1 CPU thread per process \(train.threads\)", header)
