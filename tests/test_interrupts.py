"""SIGINT/SIGTERM at any phase of training stop at a step boundary; the resumed run is bit-identical.

Each case sends the signal to this process from inside one phase (data, forward, backward,
after the optimiser step, validation, writing best.pt, the log line or last.pt), checks
the exit code and the message, resumes, and compares the test metrics, the final weights
and the log with an uninterrupted run of the same config.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import mtmm_core.run_folder as run_folder
import mtmm_core.trainer as trainer_module
from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.interrupts import TrainingInterrupted
from mtmm_core.trainer import Trainer
from small_data import FewRows, small_config

# 4 steps per epoch, 2 epochs; modality dropout draws from the RNG; famo keeps state and has an after_step.
OVERRIDES = ("train.epochs=2", "data.train_rows=128", "train.batch_size=32", "model.modality_dropout=0.3",
             "model.weighting.name=famo", "train.patience=0")


def log_without_time(run) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("time")
    return lines


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run: (test metrics, final weights, log)."""
    from small_data import SmallDataPlugin

    from mtmm_core import plugins

    name = plugins.register_plugin(SmallDataPlugin(), name="test-small-data-straight")
    out = tmp_path_factory.mktemp("straight") / "run"
    try:
        metrics = Trainer(small_config(*OVERRIDES), out).run()
    finally:
        plugins.unregister_plugin(name)
    return metrics, load_checkpoint(out / "last.pt")["model"], log_without_time(out)


def kill_on_call(owner, name: str, number: int, at_call: int, when=lambda *a, **k: True, after: bool = False):
    """Wrap ``owner.name`` so that its ``at_call``-th matching call sends ``number`` to this process."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        if not when(*args, **kwargs):
            return original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_call and not after:
            os.kill(os.getpid(), number)
        result = original(*args, **kwargs)
        if calls["n"] == at_call and after:
            os.kill(os.getpid(), number)
        return result

    return original, wrapper


def named(filename):
    return lambda state, path, *a, **k: os.path.basename(str(path)) == filename


# (phase, signal, how to inject: a function of (trainer, monkeypatch))
PHASES = {
    "data": (signal.SIGINT, lambda t, mp: mp.setattr(FewRows, "batch", kill_on_call(
        FewRows, "batch", signal.SIGINT, 6, when=lambda self, rows: self.rows == 128)[1])),
    "forward": (signal.SIGTERM, lambda t, mp: mp.setattr(t.model, "forward", kill_on_call(
        t.model, "forward", signal.SIGTERM, 3)[1])),
    "backward": (signal.SIGINT, lambda t, mp: mp.setattr(t, "_backward", kill_on_call(
        t, "_backward", signal.SIGINT, 7)[1])),
    "after optimizer step": (signal.SIGTERM, lambda t, mp: mp.setattr(t.optimizer, "step", kill_on_call(
        t.optimizer, "step", signal.SIGTERM, 2, after=True)[1])),
    "validation": (signal.SIGINT, lambda t, mp: mp.setattr(trainer_module, "evaluate", kill_on_call(
        trainer_module, "evaluate", signal.SIGINT, 1)[1])),
    "writing best.pt": (signal.SIGINT, lambda t, mp: mp.setattr(run_folder, "save_checkpoint", kill_on_call(
        run_folder, "save_checkpoint", signal.SIGINT, 1, when=named("best.pt.pending"))[1])),
    "writing the log line": (signal.SIGTERM, lambda t, mp: mp.setattr(run_folder.RunFolder, "_append_line",
                                                                      staticmethod(kill_on_call(
        run_folder.RunFolder, "_append_line", signal.SIGTERM, 1)[1]))),
    "writing last.pt": (signal.SIGINT, lambda t, mp: mp.setattr(run_folder, "save_checkpoint", kill_on_call(
        run_folder, "save_checkpoint", signal.SIGINT, 1, when=named("last.pt"))[1])),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_signal_in_any_phase_stops_at_a_step_boundary_and_resumes_bit_identically(phase, straight, small_data,
                                                                                    tmp_path, monkeypatch, capsys):
    number, inject = PHASES[phase]
    out = tmp_path / "run"
    trainer = Trainer(small_config(*OVERRIDES), out)
    with monkeypatch.context() as patch:
        inject(trainer, patch)
        with pytest.raises(TrainingInterrupted) as stopped:
            trainer.run()
    assert stopped.value.exit_code == 128 + number
    assert f"--resume {out}" in str(stopped.value) and signal.Signals(number).name in str(stopped.value)
    assert "stopping after this step" in capsys.readouterr().err
    assert not (out / ".lock").exists() and not list(out.glob(".*.tmp"))
    state = load_checkpoint(out / "last.pt")
    logged = [line["epoch"] for line in log_without_time(out)]
    assert logged == list(range(1, state["epoch"] + 1))  # the log matches the checkpoint
    assert (out / "best.pt").is_file() == (state["epoch"] > 0)

    metrics, weights, log = straight
    resumed = Trainer(small_config(*OVERRIDES), out, resume=True).run()
    assert resumed == metrics  # bit-identical floats
    final = load_checkpoint(out / "last.pt")["model"]
    assert all(torch.equal(final[key], weights[key]) for key in weights)
    assert log_without_time(out) == log


def test_a_second_signal_while_saving_waits_for_the_checkpoint(small_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    trainer = Trainer(small_config(*OVERRIDES), out)
    original = run_folder.save_checkpoint

    def save_twice_interrupted(state, path):
        if os.path.basename(str(path)) == "last.pt":
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(state, path)

    monkeypatch.setattr(run_folder, "save_checkpoint", save_twice_interrupted)
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    assert "still writing the checkpoint" in capsys.readouterr().err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_second_ctrl_c_outside_saving_stops_at_once_and_keeps_the_previous_checkpoint(
        small_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(small_config(*OVERRIDES), out)
    clock = {"now": 0.0}
    monkeypatch.setattr("mtmm_core.interrupts.time.monotonic", lambda: clock["now"])
    original = trainer._backward
    calls = {"n": 0}

    def backward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, second step: epoch 1 is committed
            os.kill(os.getpid(), signal.SIGINT)
            clock["now"] += 5.0
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "_backward", backward)
    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.run()
    assert not isinstance(stopped.value, TrainingInterrupted)
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert not (out / ".lock").exists()


def test_a_signal_while_the_test_split_is_scored_stops_at_once_and_resume_scores_it(straight, small_data, tmp_path,
                                                                                    monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(small_config(*OVERRIDES), out)
    # evaluate() runs once per epoch on validation, then on the test split: the third call is the test
    monkeypatch.setattr(trainer_module, "evaluate", kill_on_call(trainer_module, "evaluate", signal.SIGTERM, 3)[1])
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM: stopped while scoring the test split; training is "
                                                  r"complete and saved") as stopped:
        trainer.run()
    assert stopped.value.exit_code == 143
    assert not (out / ".lock").exists() and not (out / "test_metrics.json").exists()
    monkeypatch.undo()
    assert Trainer(small_config(*OVERRIDES), out, resume=True).run() == straight[0]


def test_an_interrupt_before_anything_was_saved_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    from mtmm_core.cli import main

    class InterruptedWhileStarting:
        def __init__(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "Trainer", InterruptedWhileStarting)
    assert main(["train", "--out", str(tmp_path / "run")]) == 130
    assert "interrupted before training saved anything; there is nothing to resume" in capsys.readouterr().err
