"""What a run prints: the header, the per-epoch summary, the live bar at 80 columns, and what the losses mean."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from mtmm_core.progress import epoch_summary, run_header
from mtmm_core.trainer import Trainer
from small_data import small_config


def _validation(tasks: dict[str, list[str]]) -> dict[str, float]:
    values = {f"{task}.{metric}": 0.1234 * (i + 1) for task, metrics in tasks.items()
              for i, metric in enumerate(["loss", *metrics])}
    values["loss"] = sum(v for k, v in values.items() if k.endswith(".loss"))
    return values


@pytest.mark.parametrize("width", [40, 80, 132])
def test_the_epoch_summary_fits_the_width_and_keeps_every_number(width):
    validation = _validation({"a_rather_long_task_name_for_a_digit": ["accuracy", "macro_f1", "some_plugin_metric"],
                              "sum": ["mae", "rmse", "r2"]})
    text = epoch_summary(3, 20, {"a_rather_long_task_name_for_a_digit": 1.5, "sum": 0.25}, validation,
                         "loss", improved=True, seconds=2.5, width=width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    assert " ".join(text.split()).startswith("epoch 3/20 (2.5 s) train loss 1.7500 validation loss ")
    assert "(best so far)" in text
    for key, value in validation.items():
        if key != "loss":
            assert f"{key.rpartition('.')[2]} {value:.4f}" in text
    assert "best so far" not in epoch_summary(3, 20, {"sum": 1.0}, _validation({"sum": ["mae"]}), "loss",
                                              improved=False, seconds=1.0)


def _run(tmp_path, *overrides):
    trainer = Trainer(small_config("train.epochs=1", "data.train_rows=256", "train.threads=1", *overrides),
                      tmp_path / "run")
    before = torch.get_num_threads()
    try:
        trainer.run()
    finally:
        torch.set_num_threads(before)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    return trainer, record["validation"]


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_the_header_says_how_a_regression_loss_turns_into_its_metrics(loss, small_data, tmp_path, capsys):
    """The header's claim, checked on a real run: the regression loss is on standardised targets, so
    l1 loss x std = mae and mse loss x std^2 = rmse^2 (the model's validation numbers, float32)."""
    trainer, validation = _run(tmp_path, f"model.tasks.digit_sum.loss={loss}")
    std = float(trainer.model.heads["digit_sum"].target_scale)
    header = capsys.readouterr().err
    assert f"digit_sum: {loss} on standardised targets" in header
    if loss == "l1":
        assert f"loss x {std:.4g} = mae" in header
        assert validation["digit_sum.loss"] * std == pytest.approx(validation["digit_sum.mae"], rel=1e-4)
    else:
        assert f"loss x {std:.4g}^2 = rmse^2" in header
        assert validation["digit_sum.loss"] * std ** 2 == pytest.approx(validation["digit_sum.rmse"] ** 2, rel=1e-4)
    assert all(len(line) <= 80 for line in header.splitlines() if not line.startswith("epoch "))


def test_the_header_counts_parameters_and_names_the_chance_level(small_data, tmp_path, capsys):
    trainer, _ = _run(tmp_path)
    header = capsys.readouterr().err
    parameters = sum(p.numel() for p in trainer.model.parameters())
    assert f"model: {parameters:,} parameters" in header
    assert f"ln 10 = {math.log(10):.3f}" in header and "ln 2 = 0.693" in header
    assert "data: small_avdigits (train 256, validation 192, test 192 samples)" in header


def test_the_header_alone_needs_no_run():
    class Settings:
        epochs, batch_size, lr, monitor, patience = 5, 32, 1e-3, "sum.mae", 2

    model = torch.nn.Module()
    model.heads = {}
    model.weight = torch.nn.Parameter(torch.zeros(3))
    text = run_header(out_dir="runs/x", device="cpu", threads=1, processes=2, data_name="d",
                      split_sizes={"train": 10}, model_spec={"encoders": {"a": {"name": "mlp"}},
                                                             "fusion": {"name": "concat"}},
                      model=model, settings=Settings(), steps_per_epoch=1)
    assert "2 processes" in text and "early stop after 2 epochs" in text and "validation sum.mae" in text


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_live_bar_stays_on_one_line_of_an_80_column_terminal(tmp_path):
    """`mtmm train` in a real 80x24 terminal (tmux): the bar updates one line in place, with samples/s
    and an ETA, and no line of the screen is wider than 80 columns (capture-pane -J joins wrapped lines)."""
    pytest.importorskip("tqdm")
    socket = str(tmp_path / "tmux.sock")
    command = [sys.executable, "-m", "mtmm_core.cli", "train", "--out", "run",
               "--set", "train.epochs=3", "--set", "model.dim=32", "--set", "model.encoders.audio.depth=1",
               "--set", "model.fusion.name=concat", "--set", "train.threads=1"]
    shell = f"cd {tmp_path} && {' '.join(command)}; echo EXIT $?; sleep 60"
    subprocess.run(["tmux", "-S", socket, "new-session", "-d", "-x", "80", "-y", "24", shell], check=True)
    screens, bars = [], []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            screen = subprocess.run(["tmux", "-S", socket, "capture-pane", "-p", "-J"], capture_output=True,
                                    text=True).stdout
            screen = "\n".join(line.rstrip() for line in screen.splitlines())  # tmux keeps cleared cells
            screens.append(screen)
            bars.extend(line for line in screen.splitlines() if re.match(r"epoch \d+/3 +\d+%\|", line))
            if "EXIT" in screen:
                break
            time.sleep(0.1)
    finally:
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True)
    assert "EXIT 0" in screens[-1], screens[-1]
    assert bars, "no progress bar was seen"
    assert any(re.search(r"\| *\d+/2100 eta \d\d:\d\d, \d+ samples/s, loss \d+\.\d+$", bar) for bar in bars), bars
    for screen in screens:
        lines = screen.splitlines()
        assert all(len(line) <= 80 for line in lines), screen
        assert sum(bool(re.match(r"epoch \d+/3 +\d+%\|", line)) for line in lines) <= 1, screen
    assert "test metrics" in screens[-1]
