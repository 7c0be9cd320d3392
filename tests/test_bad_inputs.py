"""Hostile inputs to the `mtmm` command: each ends in one `mtmm: error:` line naming the key, file or
flag (exit 2 for a bad value, 1 when a run cannot go on), never in a traceback."""

from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from mtmm_core import plugins
from mtmm_core.cli import main
from mtmm_core.config import (
    ConfigWarning,
    TrainSettings,
    check_device,
    read_run_config,
    read_run_model_spec,
    train_settings,
)
from mtmm_core.errors import RunError, SpecError, UsageError
from small_data import SMALL_MODEL, SmallDataPlugin, small_config

# A train command that would train only a moment if its bad value slipped through.
TRAIN = ["train", *[arg for override in SMALL_MODEL for arg in ("--set", override)],
         "--set", "data.name=small_avdigits", "--set", "train.epochs=1", "--set", "data.train_rows=32",
         "--out", "{tmp}/new_run"]
MTMM_VERSION = importlib.metadata.version("mtmm")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="mtmm plot needs matplotlib")


def _write(name: str, text: str):
    """Break a copy of the run: replace one of its files with ``text``."""
    return lambda run: (run / name).write_text(text)


def _remove(*names: str):
    return lambda run: [(run / name).unlink() for name in names]


# (id, argv, exit status, fragment of the error line, how to break the run copy {run} first)
CASES = [
    # -- train settings, validated before anything is built
    pytest.param(TRAIN + ["--set", "train.device=cuda"], 2, "train.device: 'cuda', but CUDA is not available",
                 None, id="device-cuda-without-cuda", marks=no_cuda),
    ("device-unknown", TRAIN + ["--set", "train.device=gpu"], 2,
     "train.device: unknown device 'gpu' (did you mean 'cuda'?); valid: auto, cpu, cuda", None),
    ("device-bad-index", TRAIN + ["--set", "train.device=cuda:x"], 2, "train.device: unknown device 'cuda:x'", None),
    ("lr-inf", TRAIN + ["--set", "train.lr=.inf"], 2, "train.lr: must be a finite number >= 0, got inf", None),
    ("lr-nan", TRAIN + ["--set", "train.lr=.nan"], 2, "train.lr: must be a finite number", None),
    ("lr-negative", TRAIN + ["--set", "train.lr=-1"], 2, "train.lr: must be >= 0, got -1", None),
    ("weight-decay-negative", TRAIN + ["--set", "train.weight_decay=-0.1"], 2, "train.weight_decay: must be >= 0",
     None),
    ("weight-decay-inf", TRAIN + ["--set", "train.weight_decay=.inf"], 2, "train.weight_decay: must be a finite", None),
    ("grad-clip-negative", TRAIN + ["--set", "train.grad_clip=-5"], 2,
     "train.grad_clip: must be >= 0 (0 turns clipping off), got -5", None),
    ("patience-negative", TRAIN + ["--set", "train.patience=-3"], 2, "train.patience: must be >= 0", None),
    ("seed-negative", TRAIN + ["--set", "train.seed=-1"], 2, "train.seed: must be in [0, 4294967295]", None),
    ("epochs-zero", TRAIN + ["--set", "train.epochs=0"], 2, "train.epochs: must be >= 1, got 0", None),
    ("warmup-one", TRAIN + ["--set", "train.warmup_fraction=1"], 2, "train.warmup_fraction: must be in [0, 1)", None),
    ("monitor-no-task", TRAIN + ["--set", "train.monitor=accuracy"], 2,
     "train.monitor: expected 'loss' or '<task>.<metric>'", None),
    ("monitor-unknown-task", TRAIN + ["--set", "train.monitor=imag_digit.accuracy"], 2,
     "train.monitor: 'imag_digit.accuracy' names no task of model.tasks (did you mean 'image_digit.accuracy'?)",
     None),
    ("collective-timeout-zero", TRAIN + ["--set", "train.collective_timeout=0"], 2, "train.collective_timeout", None),
    # -- the model spec, named with its config path
    ("model-dim-negative", TRAIN + ["--set", "model.dim=-8"], 2, "model.dim: must be a positive integer", None),
    ("model-dim-zero", TRAIN + ["--set", "model.dim=0"], 2, "model.dim: must be a positive integer", None),
    ("modality-dropout-nan", TRAIN + ["--set", "model.modality_dropout=.nan"], 2, "model.modality_dropout", None),
    ("task-name-with-dot", TRAIN + ["--set", "model.tasks={{a.b: {{head: binary}}}}"], 2,
     "model.tasks.a.b: a task name must not contain '.'", None),
    ("tasks-not-a-mapping", TRAIN + ["--set", "model.tasks=3"], 2, "model.tasks: expected a mapping", None),
    ("negative-encoder-size", TRAIN + ["--set", "model.encoders.image.channels=[-4, 32]"], 2,
     f"encoders.image: encoder 'cnn' from mtmm {MTMM_VERSION} rejected its parameters", None),
    ("zero-attention-heads", TRAIN + ["--set", "model.encoders.audio.heads=0"], 2,
     f"encoders.audio: encoder 'sequence_transformer' from mtmm {MTMM_VERSION} rejected its parameters", None),
    # -- --set itself
    ("set-yaml-tag", TRAIN + ["--set", "x=!!python/object:os.system"], 2,
     "--set x=!!python/object:os.system: the value is not valid YAML", None),
    ("set-bad-yaml", TRAIN + ["--set", "train.lr=[1"], 2, "--set train.lr=[1: the value is not valid YAML", None),
    ("set-empty-key-part", TRAIN + ["--set", "train..lr=1"], 2, "--set train..lr=1: the key has an empty part", None),
    ("set-no-equals", TRAIN + ["--set", "train.lr"], 2, "an override must look like key.path=value", None),
    ("set-inside-a-number", TRAIN + ["--set", "train.lr=3", "--set", "train.lr.x=3"], 2,
     "train.lr: holds int 3, not a mapping", None),
    # -- flags
    ("nproc-zero", TRAIN + ["--nproc", "0"], 2, "--nproc must be at least 1", None),
    ("nproc-negative", TRAIN + ["--nproc", "-2"], 2, "--nproc must be at least 1", None),
    ("data-missing-folder", TRAIN + ["--data", "{tmp}/nowhere"], 2, "no such folder", None),
    ("data-folder-without-yaml", TRAIN + ["--data", "{tmp}/empty"], 2, "holds no dataset.yaml", None),
    ("data-a-file", TRAIN + ["--data", "{run}/config.yaml"], 2, "is a file, not a data folder", None),
    ("config-missing", ["train", "{tmp}/nowhere.yaml"], 2, "not found; shipped configs:", None),
    # -- run folders: train --out and --resume
    ("out-not-a-run", TRAIN[:-1] + ["{tmp}/mine"], 2, "is not empty and not an mtmm run folder (it holds notes.txt)",
     lambda run: (run.parent / "mine").mkdir() or (run.parent / "mine" / "notes.txt").write_text("mine")),
    ("out-holds-a-run", TRAIN[:-1] + ["{run}"], 2, "already holds a run: continue it with `mtmm train --resume",
     None),
    ("out-a-file", TRAIN[:-1] + ["{run}/config.yaml"], 2, "is a file, not a folder", None),
    ("resume-missing-folder", ["train", "--resume", "{tmp}/nowhere"], 2, "nowhere: no such run folder", None),
    ("resume-not-a-run", ["train", "--resume", "{tmp}/empty"], 2, "config.yaml does not exist", None),
    ("resume-empty-config", ["train", "--resume", "{run}"], 2, "config.yaml is empty", _write("config.yaml", "")),
    ("resume-malformed-config", ["train", "--resume", "{run}"], 2, "config.yaml is not valid YAML: ",
     _write("config.yaml", "train: [1\n")),
    ("resume-no-checkpoint", ["train", "--resume", "{run}"], 2, "has no checkpoint to resume", _remove("last.pt")),
    ("resume-with-set", ["train", "--resume", "{run}", "--set", "train.epochs=3"], 2,
     "--set train.epochs cannot change a resumed run", None),
    ("resume-with-bad-allowed-set", ["train", "--resume", "{run}", "--set", "train.device=gpu"], 2,
     "train.device: unknown device 'gpu'", None),
    ("resume-with-data", ["train", "--resume", "{run}", "--data", "small_avdigits"], 2,
     "--data cannot be combined with it", None),
    ("resume-with-config", ["train", "default", "--resume", "{run}"], 2,
     "a config file cannot be combined with it", None),
    # -- run folders: evaluate
    ("evaluate-missing-folder", ["evaluate", "{tmp}/nowhere"], 2, "nowhere: no such run folder", None),
    ("evaluate-not-a-run", ["evaluate", "{tmp}/empty"], 2, "config.yaml does not exist", None),
    ("evaluate-a-file", ["evaluate", "{run}/config.yaml"], 2, "is a file, not a run folder", None),
    ("evaluate-empty-config", ["evaluate", "{run}"], 2, "config.yaml is empty", _write("config.yaml", "")),
    ("evaluate-malformed-config", ["evaluate", "{run}"], 2, "config.yaml is not valid YAML: ",
     _write("config.yaml", "train: [1\n")),
    ("evaluate-config-a-list", ["evaluate", "{run}"], 2, "config.yaml must hold a mapping, got list",
     _write("config.yaml", "- train\n")),
    ("evaluate-config-bad-value", ["evaluate", "{run}"], 2, "config.yaml: train.lr: must be >= 0",
     lambda run: (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("lr: 0.002", "lr: -1"))),
    ("evaluate-no-checkpoint", ["evaluate", "{run}"], 2, "holds no checkpoint", _remove("last.pt", "best.pt")),
    ("evaluate-unknown-modality", ["evaluate", "{run}", "--modalities", "imag"], 2,
     "--modalities: unknown modality 'imag' (did you mean 'image'?); this model takes audio, image", None),
    ("evaluate-one-unknown-modality", ["evaluate", "{run}", "--modalities", "image,imag"], 2,
     "unknown modality 'imag'", None),
    ("evaluate-no-modality", ["evaluate", "{run}", "--modalities", ","], 2, "--modalities: no modality given", None),
    # -- run folders: predict
    ("predict-missing-folder", ["predict", "{tmp}/nowhere", "--data", "small_avdigits", "--out", "{tmp}/p.npz"], 2,
     "no such run folder", None),
    ("predict-empty-model", ["predict", "{run}", "--data", "small_avdigits", "--out", "{tmp}/p.npz"], 2,
     "model.yaml is empty", _write("model.yaml", "")),
    ("predict-malformed-model", ["predict", "{run}", "--data", "small_avdigits", "--out", "{tmp}/p.npz"], 2,
     "model.yaml is not valid YAML", _write("model.yaml", "dim: [\n")),
    ("predict-bad-model-value", ["predict", "{run}", "--data", "small_avdigits", "--out", "{tmp}/p.npz"], 2,
     "model.yaml: dim: must be a positive integer",
     lambda run: (run / "model.yaml").write_text((run / "model.yaml").read_text().replace("dim: 32", "dim: -8", 1))),
    ("predict-out-a-folder", ["predict", "{run}", "--data", "small_avdigits", "--out", "{tmp}"], 2,
     "is a folder; give a file path", None),
    ("predict-out-under-a-file", ["predict", "{run}", "--data", "small_avdigits", "--out", "{run}/config.yaml/p.npz"],
     2, "config.yaml is a file, so it cannot hold p.npz", None),
    ("predict-unknown-modality", ["predict", "{run}", "--data", "small_avdigits", "--out", "{tmp}/p.npz",
                                  "--modalities", "imag"], 2, "--modalities: unknown modality 'imag'", None),
    ("predict-unknown-data", ["predict", "{run}", "--data", "no_such_data", "--out", "{tmp}/p.npz"], 2,
     "unknown dataset 'no_such_data'", None),
    # -- run folders: plot
    pytest.param(["plot", "{tmp}/nowhere"], 2, "metrics.jsonl does not exist", None, id="plot-missing-folder",
                 marks=needs_matplotlib),
    pytest.param(["plot", "{run}", "--out", "{tmp}"], 2, "--out", None, id="plot-out-a-folder", marks=needs_matplotlib),
    pytest.param(["plot", "{run}", "--out", "{tmp}/x.foo"], 2, "unknown image format '.foo'", None,
                 id="plot-out-unknown-format", marks=needs_matplotlib),
    pytest.param(["plot", "{run}"], 2, "metrics.jsonl, line 1: not a JSON epoch record",
                 _write("metrics.jsonl", "garbage\n{}\n"), id="plot-malformed-log", marks=needs_matplotlib),
    pytest.param(["plot", "{run}"], 2, "metrics.jsonl holds no epoch yet", _write("metrics.jsonl", ""),
                 id="plot-empty-log", marks=needs_matplotlib),
]
CASES = [case if hasattr(case, "marks") else pytest.param(*case[1:], id=case[0]) for case in CASES]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One finished 1-epoch run on small_avdigits, shared by the module (copied before it is broken)."""
    from mtmm_core.trainer import Trainer

    name = plugins.register_plugin(SmallDataPlugin(), name="test-small-data-bad-inputs")
    try:
        run = tmp_path_factory.mktemp("bad_inputs") / "run"
        Trainer(small_config("train.epochs=1", "data.train_rows=32", "train.batch_size=32"), run).run()
    finally:
        plugins.unregister_plugin(name)
    return run


def _assert_one_error_line(err: str, fragment: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("mtmm: error:")]
    assert len(lines) == 1, err
    assert "\n" not in lines[0] and fragment in lines[0], err


@pytest.mark.parametrize("argv, status, fragment, breaking", CASES)
def test_a_bad_input_is_one_error_line(argv, status, fragment, breaking, trained_run, small_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    (tmp_path / "empty").mkdir()
    if breaking is not None:
        breaking(run)
    capsys.readouterr()
    assert main([arg.format(run=run, tmp=tmp_path) for arg in argv]) == status
    _assert_one_error_line(capsys.readouterr().err, fragment)
    assert not (tmp_path / "new_run" / "last.pt").exists()  # nothing trained


def test_an_os_error_while_writing_is_one_line_with_the_path_and_exit_1(trained_run, small_data, tmp_path, capsys,
                                                                         monkeypatch):
    import numpy as np

    out = tmp_path / "p.npz"

    def disk_full(file, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(np, "savez", disk_full)
    assert main(["predict", str(trained_run), "--data", "small_avdigits", "--out", str(out)]) == 1
    _assert_one_error_line(capsys.readouterr().err, f"{out}: No space left on device")


@pytest.mark.parametrize("error, status, fragment", [
    (RunError("the run folder is in use"), 1, "the run folder is in use"),
    (UsageError("bad flag"), 2, "bad flag"),
    (SpecError("train.lr", "must be >= 0"), 2, "train.lr: must be >= 0"),
    (ValueError("first line\n  second line"), 2, "first line; second line"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "some/file"), 2,
     "some/file: No such file or directory"),
    (ImportError("mtmm plot needs matplotlib"), 2, "mtmm plot needs matplotlib"),
], ids=["run-error", "usage-error", "spec-error", "multi-line", "file-not-found", "import-error"])
def test_main_maps_errors_to_exit_statuses(error, status, fragment, monkeypatch, capsys):
    import mtmm_core.cli.runs as cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "cmd_plot", fail)
    assert main(["plot", "anything"]) == status
    _assert_one_error_line(capsys.readouterr().err, fragment)


def test_a_real_bug_still_shows_its_traceback(monkeypatch):
    import mtmm_core.cli.runs as cli

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_plot", bug)
    with pytest.raises(KeyError):
        main(["plot", "anything"])


def test_a_surprising_value_is_a_one_line_warning(monkeypatch, capsys):
    import mtmm_core.cli.runs as cli

    def lr_zero(args):
        train_settings({"lr": 0})
        return 0

    monkeypatch.setattr(cli, "cmd_plot", lr_zero)
    assert main(["plot", "anything"]) == 0
    assert capsys.readouterr().err == "mtmm: warning: train.lr is 0: the weights will not change\n"


# -- train_settings, directly ----------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("lr", math.inf, r"^train\.lr: must be a finite number >= 0, got inf$"),
    ("lr", -1e-3, r"^train\.lr: must be >= 0, got -0\.001$"),
    ("weight_decay", math.nan, r"^train\.weight_decay: must be a finite number >= 0"),
    ("weight_decay", -0.01, r"^train\.weight_decay: must be >= 0"),
    ("grad_clip", -5, r"^train\.grad_clip: must be >= 0 \(0 turns clipping off\), got -5$"),
    ("grad_clip", math.inf, r"^train\.grad_clip: must be a finite number"),
    ("patience", -3, r"^train\.patience: must be >= 0 \(0 never stops early\), got -3$"),
    ("epochs", 0, r"^train\.epochs: must be >= 1, got 0$"),
    ("batch_size", -64, r"^train\.batch_size: must be >= 1"),
    ("eval_batch_size", 0, r"^train\.eval_batch_size: must be >= 1"),
    ("seed", -1, r"^train\.seed: must be in \[0, 4294967295\], got -1$"),
    ("seed", 2**32, r"^train\.seed: must be in \[0, 4294967295\]"),
    ("warmup_fraction", 1.0, r"^train\.warmup_fraction: must be in \[0, 1\)"),
    ("warmup_fraction", math.nan, r"^train\.warmup_fraction: must be in \[0, 1\)"),
    ("collective_timeout", 0, r"^train\.collective_timeout: must be >= 1"),
    ("monitor", "accuracy", r"^train\.monitor: expected 'loss' or '<task>\.<metric>'"),
    ("monitor", ".accuracy", r"^train\.monitor: expected 'loss'"),
    ("device", "gpu", r"^train\.device: unknown device 'gpu' \(did you mean 'cuda'\?\); valid: auto, cpu, cuda"),
    ("device", "cuda:one", r"^train\.device: unknown device 'cuda:one'"),
    ("lr", "fast", r"^train\.lr: expected float, got str 'fast'$"),
    ("epochs", 2.5, r"^train\.epochs: expected int, got float 2\.5$"),
    ("epochs", True, r"^train\.epochs: expected int, got bool True$"),
    ("epoch", 3, r"^train\.epoch: unknown setting; did you mean 'epochs'\?"),
])
def test_train_settings_refuse_out_of_range_values_naming_the_key(key, value, message):
    with pytest.raises(SpecError, match=message):
        train_settings({key: value})


@pytest.mark.parametrize("section", [
    {"lr": 1e-4, "weight_decay": 0, "grad_clip": 0, "patience": 0, "seed": 0, "warmup_fraction": 0.0},
    {"seed": 2**32 - 1, "epochs": 1, "batch_size": 1, "eval_batch_size": 1, "device": "cpu"},
    {"device": "auto", "monitor": "match.accuracy", "collective_timeout": 30},
])
def test_train_settings_accept_the_edges_of_their_ranges(section):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        settings = train_settings(section)
    assert isinstance(settings, TrainSettings)
    assert all(getattr(settings, key) == value for key, value in section.items())


def test_scientific_notation_is_a_number_in_a_file_and_in_set():
    assert train_settings({"lr": "1e-3"}).lr == 1e-3  # PyYAML reads `lr: 1e-3` as a string
    from mtmm_core.config import load_config

    assert load_config(None, ["train.lr=3e-4", "train.weight_decay=1E-2"])["train"]["lr"] == 3e-4


@pytest.mark.parametrize("lr, warning", [(0, "train.lr is 0"), (5.0, "unusually large")])
def test_surprising_learning_rates_warn(lr, warning):
    with pytest.warns(ConfigWarning, match=warning):
        train_settings({"lr": lr})


def test_an_unavailable_device_is_refused_with_what_to_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpecError, match=r"^train\.device: 'cuda:1', but CUDA is not available .*use auto or cpu$"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    with pytest.raises(SpecError, match=r"this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        check_device("cuda:2")


def test_run_folder_helpers_name_the_file(trained_run, tmp_path):
    config = read_run_config(trained_run)
    assert config["train"]["epochs"] == 1 and config["data"]["name"] == "small_avdigits"
    assert read_run_model_spec(trained_run)["dim"] == 32
    broken = tmp_path / "run"
    shutil.copytree(trained_run, broken, ignore=shutil.ignore_patterns(".lock"))
    (broken / "config.yaml").write_text("train: {epochs: 0}\nmodel: {}\n")
    with pytest.raises(SpecError, match=rf"^{broken / 'config.yaml'}: train\.epochs: must be >= 1"):
        read_run_config(broken)
    with pytest.raises(UsageError, match="no such run folder"):
        read_run_model_spec(tmp_path / "nowhere")
    # overrides apply before validation, and a bad one is named as such, not as the file's
    (broken / "config.yaml").write_text((trained_run / "config.yaml").read_text().replace("device: auto",
                                                                                          "device: gpu"))
    assert read_run_config(broken, ["train.device=cpu"])["train"]["device"] == "cpu"
    with pytest.raises(SpecError, match=rf"^{broken / 'config.yaml'}: train\.device: unknown device 'gpu'"):
        read_run_config(broken)
    with pytest.raises(SpecError, match=r"^train\.lr: must be >= 0"):
        read_run_config(broken, ["train.device=cpu", "train.lr=-1"])


def test_renaming_a_component_with_set_drops_the_old_components_parameters():
    from mtmm_core.config import load_config

    # the default fusion is cross_attention with heads: 4, which gated does not take
    assert load_config(None, ["model.fusion.name=gated"])["model"]["fusion"] == {"name": "gated"}
    assert load_config(None, ["model.fusion.heads=8", "model.fusion.name=perceiver"])["model"]["fusion"] == {
        "heads": 8, "name": "perceiver"}
    assert load_config(None, ["model.fusion.name=cross_attention"])["model"]["fusion"]["heads"] == 4


def test_a_batch_larger_than_the_training_split_warns_and_uses_the_split(small_data, tmp_path):
    from mtmm_core.config import ConfigWarning
    from mtmm_core.trainer import Trainer

    with pytest.warns(ConfigWarning, match=r"train.batch_size 64 is larger than the training split \(40 samples\)"):
        trainer = Trainer(small_config("train.epochs=1", "data.train_rows=40"), tmp_path / "run")
    assert trainer.steps_per_epoch == 1
    trainer.close()
