"""``mtmm tune``: the tune section and its errors, trials as run folders, summary and best.yaml, resuming,
pruning, and a trial with a non-finite loss counting as failed (needs the ``tune`` extra: Optuna)."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import yaml

from mtmm_core.cli import main as cli_main
from mtmm_core.config import load_config
from mtmm_core.errors import SpecError
from mtmm_core.trainer import NonFiniteLossError
from mtmm_core.tune import parse_param, parse_space

# A small model on 128 training samples: a trial takes a second or two.
SMALL_TUNE = """\
extends: default
data: {name: small_avdigits, train_rows: 128}
model:
  dim: 32
  encoders:
    image: {name: cnn, channels: [16, 32]}
    audio: {name: sequence_transformer, in_features: 13, depth: 1, heads: 4, max_len: 128}
  fusion: {name: concat}
train: {epochs: 2, threads: 1}
tune:
  trials: 3
  metric: match.accuracy
  space:
    train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    model.fusion.name: [concat, gated]
"""


@pytest.fixture
def optuna():
    return pytest.importorskip("optuna")


def read_summary(folder):
    with open(folder / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# -- the tune section --------------------------------------------------------------------------------------
def test_the_space_reads_log_ranges_int_ranges_and_choices(optuna):
    space = parse_space({"train.lr": {"low": "1e-4", "high": 1.0e-2, "log": True},
                         "model.fusion.dim": {"low": 32, "high": 128, "step": 32},
                         "train.warmup_fraction": {"low": 0.0, "high": 0.2, "step": 0.05},
                         "model.fusion.name": ["concat", "gated"],
                         "model.encoders.image": {"channels": [[16, 32], [32, 64]]}})  # nested, as --set writes it
    lr, dim, warmup = space["train.lr"], space["model.fusion.dim"], space["train.warmup_fraction"]
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-4, 1e-2, True, False)  # "1e-4": YAML 1.1 text, read as a number
    assert (dim.integer, dim.grid()) == (True, [32, 64, 96, 128])
    assert warmup.grid() == [0.0, 0.05, 0.1, 0.15, 0.2] and not warmup.integer
    assert space["model.fusion.name"].choices == ("concat", "gated")
    channels = space["model.encoders.image.channels"]
    assert channels.encoded and channels.optuna_choices() == ["[16, 32]", "[32, 64]"]

    trial = optuna.trial.FixedTrial({"train.lr": 3e-3, "model.fusion.dim": 64, "model.fusion.name": "gated",
                                     "model.encoders.image.channels": "[32, 64]", "train.warmup_fraction": 0.1})
    suggested = {key: param.suggest(trial) for key, param in space.items()}
    assert suggested == {"train.lr": 3e-3, "model.fusion.dim": 64, "train.warmup_fraction": 0.1,
                         "model.fusion.name": "gated", "model.encoders.image.channels": [32, 64]}
    assert isinstance(suggested["model.fusion.dim"], int)


@pytest.mark.parametrize("key, spec, error", [
    ("train.lr", 0.001, r"^tune\.space\.train\.lr: expected a list of choices \(e\.g\. \[32, 64\]\) or a range"),
    ("train.lr", [], r"^tune\.space\.train\.lr: the list of choices is empty"),
    ("train.lr", {"low": 1e-4, "hi": 1e-2}, r"^tune\.space\.train\.lr\.hi: unknown range setting; did you mean 'high'"),
    ("train.lr", {"low": 1e-4}, r"^tune\.space\.train\.lr\.high: missing"),
    ("train.lr", {"low": 1e-2, "high": 1e-4}, r"^tune\.space\.train\.lr: low \(0\.01\) must be below high"),
    ("train.lr", {"low": 0.0, "high": 1e-2, "log": True}, r"^tune\.space\.train\.lr\.low: a log range needs low > 0"),
    ("train.lr", {"low": 1e-4, "high": 1e-2, "log": "yes"}, r"^tune\.space\.train\.lr\.log: expected true or false"),
    ("train.lr", {"low": "fast", "high": 1e-2}, r"^tune\.space\.train\.lr\.low: expected a finite number"),
    ("train.lr", {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}, r"log and step cannot be combined"),
    ("model.dim", {"low": 32, "high": 100, "step": 32}, r"^tune\.space\.model\.dim: high - low \(68\) must be a "
                                                        r"multiple of step \(32\), e\.g\. high: 96"),
    ("train.lr", [1, 2, 1], r"repeat a value"),
    ("lr", [1e-3], r"^tune\.space\.lr: is not a key tune can search"),
    ("trian.lr", [1e-3], r"^tune\.space\.trian\.lr: is not a key tune can search \(did you mean 'train'\?\)"),
])
def test_space_errors_name_the_key_and_what_is_valid(key, spec, error):
    with pytest.raises(SpecError, match=error):
        parse_param(key, spec)


@pytest.mark.parametrize("overrides, error", [
    (["tune.space.train.lrr=[0.001]"], r"^tune\.space\.train\.lrr: the value 0\.001 does not fit the config: "
                                       r"train\.lrr: unknown setting; did you mean 'lr'\?"),
    (["tune.space.train.lr={low: -1, high: 1}"], r"^tune\.space\.train\.lr: the value -1 does not fit the config: "
                                                 r"train\.lr: must be >= 0"),
    (["tune.space.model.tasks.match.head=[binary]", "tune.metric=mach.accuracy"],
     r"^tune\.metric: 'mach\.accuracy' names no task of model\.tasks \(did you mean 'match\.accuracy'\?\)"),
    (["tune.space.train.lr=[0.001]", "tune.sampler=grdi"], r"^tune\.sampler: unknown sampler 'grdi' \(did you mean "
                                                           r"'grid'\?\); valid: tpe, random, grid"),
    (["tune.space.train.lr={low: 1e-4, high: 1e-2}", "tune.sampler=grid"],
     r"^tune\.space\.train\.lr: sampler grid needs a list of values or a range with a step"),
    (["tune.space.train.lr=[0.001]", "tune.trials=0"], r"^tune\.trials: expected an integer >= 1"),
    (["tune.space.train.lr=[0.001]", "tune.pruner=hyperband"], r"^tune\.pruner: unknown pruner 'hyperband'; "
                                                               r"valid: median, none"),
    (["tune.space.train.lr=[0.001]", "tune.pruner={name: median, patience: 2}"],
     r"^tune\.pruner\.patience: unknown setting; valid: name, startup_trials, warmup_epochs"),
    (["tune.spase.train.lr=[0.001]"], r"^tune\.spase: unknown setting; did you mean 'space'\?"),
    (["tune.trials=5"], r"^tune\.space: missing: name the config keys to search"),
])
def test_tune_section_errors_name_the_key(overrides, error):
    with pytest.raises(SpecError, match=error):
        load_config(None, overrides)


def test_a_valid_tune_section_is_completed_with_its_defaults():
    config = load_config(None, ["tune.space.train.lr={low: 1e-4, high: 1e-2, log: true}",
                                "tune.space.model.fusion.name=[concat, gated]"])
    assert config["tune"] == {"trials": 20, "metric": None, "sampler": "tpe", "pruner": "median",
                              "space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                        "model.fusion.name": ["concat", "gated"]}}


def test_without_optuna_tune_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tune.yaml"
    config.write_text(SMALL_TUNE)
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    assert cli_main(["tune", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "pip install 'mtmm[tune]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- tuning --------------------------------------------------------------------------------------------------
def test_a_three_trial_tune_writes_run_folders_a_summary_and_the_best_config_and_resumes(
        optuna, small_data, tmp_path, capsys):
    from mtmm_core.tune import tune

    config, out = tmp_path / "tune.yaml", tmp_path / "tune"
    config.write_text(SMALL_TUNE)
    assert cli_main(["tune", str(config), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("trial ")]
    assert [line.split()[:2] for line in lines] == [["trial", "0"], ["trial", "1"], ["trial", "2"]]
    assert all("train.lr=" in line and "model.fusion.name=" in line and "complete" in line for line in lines)
    assert "epoch 1/2" not in captured.err  # the trials' own output went to their train.log
    assert "best: trial" in captured.out

    rows = read_summary(out)
    assert [row["trial"] for row in rows] == ["0", "1", "2"] and {row["state"] for row in rows} == {"complete"}
    for row in rows:
        run = out / row["run"]
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 2 and (run / "train.log").is_file() and (run / "test_metrics.json").is_file()
        trained = yaml.safe_load((run / "config.yaml").read_text())
        assert trained["train"]["lr"] == pytest.approx(float(row["train.lr"]))
        assert trained["model"]["fusion"]["name"] == row["model.fusion.name"]
        assert "tune" not in trained and trained["train"]["progress"] is False
        best_record = min(records, key=lambda r: r["validation"]["loss"])  # the run's best epoch (train.monitor)
        assert float(row["match.accuracy"]) == pytest.approx(best_record["validation"]["match.accuracy"])
        assert int(row["best_epoch"]) == best_record["epoch"]

    best_row = max(rows, key=lambda row: (float(row["match.accuracy"]), -int(row["trial"])))
    best = load_config(out / "best.yaml")  # runnable: `mtmm train OUT/best.yaml` loads it the same way
    trained = yaml.safe_load((out / best_row["run"] / "config.yaml").read_text())
    assert best["train"]["lr"] == pytest.approx(float(best_row["train.lr"]))
    assert best["model"]["fusion"]["name"] == best_row["model.fusion.name"]
    assert best == {**trained, "train": {**trained["train"], "progress": True}}
    assert "tune" not in best

    # the same folder again is refused; --resume continues the study with more trials
    assert cli_main(["tune", str(config), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    result = tune(resume=out, trials=4)
    assert [t.number for t in result.trials] == [0, 1, 2, 3] and (out / "trial-003" / "metrics.jsonl").is_file()
    assert len(read_summary(out)) == 4 and result.direction == "maximize"
    assert result.best.metric == max(t.metric for t in result.trials)
    assert result.best_config["train"]["lr"] == pytest.approx(result.best.values["train.lr"])

    # a second tune of the same config picks the same first trial (the sampler is seeded by train.seed)
    again = tune(config, trials=1, out=tmp_path / "again")
    assert again.trials[0].values == result.trials[0].values


def test_a_pruned_trial_stops_early_and_is_recorded_as_pruned(optuna, small_data, tmp_path, monkeypatch):
    """The pruner's verdict, raised as TrialPruned from on_epoch_end, stops the real trainer after that epoch."""
    import mtmm_core.tune.study as tuning

    class PruneFromTheSecondTrial(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number >= 1

    monkeypatch.setattr(tuning, "_pruner", lambda optuna, settings: PruneFromTheSecondTrial())
    config = tmp_path / "tune.yaml"
    config.write_text(SMALL_TUNE)
    result = tuning.tune(config, trials=2, out=tmp_path / "tune", train={"epochs": 3})
    assert [t.state for t in result.trials] == ["complete", "pruned"]
    pruned = result.trials[1]
    assert pruned.epochs == 1 and "at epoch 1" in pruned.note and pruned.metric is not None
    assert len((pruned.run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (pruned.run / "test_metrics.json").exists()  # pruned runs are not tested
    assert len((result.trials[0].run / "metrics.jsonl").read_text().splitlines()) == 3
    assert result.best.number == 0 and read_summary(tmp_path / "tune")[1]["state"] == "pruned"


def test_median_pruner_settings(optuna):
    from mtmm_core.tune.study import _pruner

    median = _pruner(optuna, {"name": "median", "startup_trials": 2, "warmup_epochs": 3})
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (2, 4)  # epochs 1-3 are never pruned
    assert isinstance(_pruner(optuna, "none"), optuna.pruners.NopPruner)


def test_a_non_finite_loss_fails_its_trial_and_the_tune_goes_on(optuna, tmp_path, monkeypatch, capsys):
    """Trials here are a fake ``train`` that reports a validation loss of lr * 1000 per epoch."""
    import mtmm_core.api as api
    from mtmm_core.tune import tune

    calls = []

    def fake_train(config, *, out, force, on_epoch_end, **values):
        calls.append(values)
        out.mkdir(parents=True)
        if values["train.lr"] == 0.002:
            raise NonFiniteLossError("the loss of task 'match' is not finite at epoch 1")
        for epoch in (1, 2):
            on_epoch_end({"epoch": epoch, "validation": {"loss": values["train.lr"] * 1000 / epoch}})

    monkeypatch.setattr(api, "train", fake_train)
    result = tune(None, out=tmp_path / "tune", tune={"sampler": "grid", "space": {"train.lr": [0.001, 0.002, 0.003]}})
    assert len(calls) == 3 and all(values["train.progress"] is False for values in calls)
    states = {t.values["train.lr"]: (t.state, t.note) for t in result.trials}
    assert states[0.002] == ("failed", "the loss of task 'match' is not finite at epoch 1")
    assert states[0.001][0] == states[0.003][0] == "complete"
    assert result.direction == "minimize" and result.best.values == {"train.lr": 0.001}
    assert result.best.metric == pytest.approx(0.5) and result.best.best_epoch == 2
    assert "failed: the loss of task 'match' is not finite" in capsys.readouterr().err
    assert [row["state"] for row in read_summary(tmp_path / "tune")].count("failed") == 1

    # any other error stops the tune, recorded as a failed trial that does not count
    def broken_train(config, *, out, force, on_epoch_end, **values):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(api, "train", broken_train)
    with pytest.raises(RuntimeError, match="disk on fire"):
        tune(None, 2, tmp_path / "broken", tune={"space": {"train.lr": [0.001, 0.002]}})
    assert [(row["state"], row["note"]) for row in read_summary(tmp_path / "broken")] == [("failed", "disk on fire")]


def test_command_line_errors(optuna, tmp_path, capsys):
    config = tmp_path / "tune.yaml"
    config.write_text(SMALL_TUNE)
    assert cli_main(["tune", str(config), "--trials", "0"]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err
    assert cli_main(["tune", str(config), "--resume", str(tmp_path)]) == 2
    assert "--resume continues the tune" in capsys.readouterr().err
    assert cli_main(["tune", "--resume", str(tmp_path)]) == 2
    assert "is not a tune folder" in capsys.readouterr().err
    assert cli_main(["tune"]) == 2
    assert "give the config to tune" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert cli_main(["tune", str(config), "--out", str(tmp_path / "busy")]) == 2
    assert "is not empty and holds no tune" in capsys.readouterr().err
    assert cli_main(["tune", "default", "--out", str(tmp_path / "none")]) == 2
    assert "tune: missing" in capsys.readouterr().err
