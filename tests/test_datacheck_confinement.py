"""Hostile data folders: files outside the folder, absurd scales and sizes, and data that does not
fit the config's model (`mtmm data check PATH --config CONFIG`). See docs/data.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_userdata import SPEC, make_folder, write_spec

from mtmm_core import datacheck
from mtmm_core.cli import main as cli_main
from mtmm_core.config import validate_config
from mtmm_core.data import complete_model_spec
from mtmm_core.data_fit import check_against_config, check_model_fit, require_model_fit
from mtmm_core.datacheck import check_dataset
from mtmm_core.errors import SpecError
from mtmm_core.userdata import FolderDataset

N = 60  # samples of make_folder


@pytest.fixture
def folder(tmp_path):
    """A valid folder at tmp_path/data, and beside it (outside it) tmp_path/outside/ with copies of its files."""
    root = make_folder(tmp_path / "data")
    shutil.copytree(root, tmp_path / "outside")
    return root


def spec_edit(change):
    def apply(root, monkeypatch):
        spec = yaml.safe_load((root / "dataset.yaml").read_text())
        change(spec)
        write_spec(root, spec)
    return apply


def set_key(section, name, **values):
    return spec_edit(lambda spec: spec[section][name].update(values))


def symlink(name, target):
    """Replace ``name`` in the folder by a symlink to ``target`` (relative to the folder)."""
    def apply(root, monkeypatch):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        path.symlink_to(target)
    return apply


def save(name, make):
    return lambda root, monkeypatch: np.save(root / name, make(root))


def limit(value, then=None):
    """Lower MAX_SAMPLE_VALUES (a 2**26 value sample would be a large file) and apply ``then``."""
    def apply(root, monkeypatch):
        monkeypatch.setattr(datacheck, "MAX_SAMPLE_VALUES", value)
        if then is not None:
            then(root, monkeypatch)
    return apply


def _score_with(root, value):
    score = np.load(root / "labels/score.npy").astype(np.float64)
    score[3] = value
    return score


def _image_with(value, dtype):
    def make(root):
        image = np.load(root / "image.npy").astype(dtype)
        image[7, 0, 2, 2] = value
        return image
    return make


OUTSIDE = "the data folder"  # every confinement message says the file must stay inside the data folder
# case: (break the folder, problem file (None: the name given), field, fragment of the message)
CASES = {
    "file with ..": (set_key("modalities", "image", file="../outside/image.npy"), "../outside/image.npy",
                     "modalities.image.file", "goes up with '..'"),
    "inner .. that stays inside": (set_key("modalities", "image", file="labels/../image.npy"),
                                   "labels/../image.npy", "modalities.image.file", "goes up with '..'"),
    "absolute file": (lambda r, m: set_key("tasks", "score", file=str(r.parent / "outside/labels/score.npy"))(r, m),
                      None, "tasks.score.file", "is an absolute path"),
    "absolute file inside": (lambda r, m: set_key("tasks", "score", file=str(r / "labels/score.npy"))(r, m),
                             None, "tasks.score.file", "is an absolute path"),
    "symlink out": (symlink("labels/flag.npy", "../../outside/labels/flag.npy"), "labels/flag.npy",
                    "tasks.flag.file", "(through a symlink), outside the data folder"),
    "absolute symlink out": (lambda r, m: symlink("image.npy", r.parent / "outside/image.npy")(r, m), "image.npy",
                             "modalities.image.file", "outside the data folder"),
    "symlinked folder out": (symlink("labels", "../outside/labels"), "labels/digit.npy", "tasks.digit.file",
                             "outside the data folder"),
    "values symlink out": (symlink("audio_values.npy", "../outside/audio_values.npy"), "audio_values.npy",
                           "modalities.audio.values", OUTSIDE),
    "offsets with ..": (set_key("modalities", "audio", offsets="../outside/audio_offsets.npy"),
                        "../outside/audio_offsets.npy", "modalities.audio.offsets", "goes up with '..'"),
    "present with ..": (set_key("modalities", "audio", present="labels/../../outside/p.npy"),
                        "labels/../../outside/p.npy", "modalities.audio.present", "goes up with '..'"),
    "split file with ..": (spec_edit(lambda s: s.update(splits={"file": "../outside/split.npy"})),
                           "../outside/split.npy", "splits.file", "goes up with '..'"),
    "dataset.yaml symlink out": (symlink("dataset.yaml", "../outside/dataset.yaml"), "dataset.yaml", "",
                                 "outside the data folder"),
    "symlink loop": (lambda r, m: (r / "loop.npy").symlink_to("loop.npy") or
                     set_key("tasks", "score", file="loop.npy")(r, m), "loop.npy", "tasks.score.file",
                     "cannot be resolved"),
    "scale NaN": (set_key("modalities", "image", scale=float("nan")), "dataset.yaml", "modalities.image.scale",
                  "expected a finite number in [1e-12, 1e+12]"),
    "scale 1e300": (set_key("modalities", "image", scale=1e300), "dataset.yaml", "modalities.image.scale",
                    "got 1e+300"),
    "scale inf": (set_key("modalities", "audio", scale=float("inf")), "dataset.yaml", "modalities.audio.scale",
                  "got inf"),
    "scale zero": (set_key("modalities", "image", scale=0), "dataset.yaml", "modalities.image.scale", "got 0"),
    "scale negative": (set_key("modalities", "image", scale=-2.0), "dataset.yaml", "modalities.image.scale",
                       "got -2.0"),
    "scale a string": (set_key("modalities", "image", scale="large"), "dataset.yaml", "modalities.image.scale",
                       "got 'large'"),
    "scale 1e13 as YAML text": (set_key("modalities", "image", scale="1e13"), "dataset.yaml",
                                "modalities.image.scale", "got 10000000000000.0"),
    "regression target beyond float32": (
        lambda r, m: np.save(r / "labels/score.npy", _score_with(r, 1e300)), "labels/score.npy", "tasks.score.file",
        "infinite or beyond float32's range"),
    "float64 beyond float32": (save("image.npy", _image_with(1e39, np.float64)), "image.npy",
                               "modalities.image.file",
                               "values too large for float32 once multiplied by the scale 0.5"),
    "scale overflows float32": (lambda r, m: (save("image.npy", _image_with(1e30, np.float32))(r, m),
                                              set_key("modalities", "image", scale=1e10)(r, m)),
                                "image.npy", "modalities.image.file", "row 7"),
    "frames overflow float32": (lambda r, m: save("audio_values.npy", lambda root: np.full_like(
                                    np.load(root / "audio_values.npy"), 1e300, dtype=np.float64))(r, m),
                                "audio_values.npy", "modalities.audio.values", "values too large for float32"),
    "num_classes 2e8": (set_key("tasks", "digit", num_classes=200_000_000), "dataset.yaml",
                        "tasks.digit.num_classes", "expected an integer in [2, 100000]"),
    "num_classes 1": (set_key("tasks", "digit", num_classes=1), "dataset.yaml", "tasks.digit.num_classes",
                      "got 1"),
    "num_classes a float": (set_key("tasks", "digit", num_classes=4.0), "dataset.yaml", "tasks.digit.num_classes",
                            "got 4.0"),
    "labels K too large": (save("labels/flag.npy", lambda root: np.zeros((N, 100_001), dtype=bool)),
                           "labels/flag.npy", "tasks.flag.file", "1 <= K <= 100000"),
    "labels K zero": (save("labels/score.npy", lambda root: np.zeros((N, 0), dtype=np.float32)),
                      "labels/score.npy", "tasks.score.file", "1 <= K <= 100000"),
    "sample too large": (limit(32), "image.npy", "modalities.image.file", "a sample holds 64 values"),
    "empty samples": (save("image.npy", lambda root: np.zeros((N, 1, 0, 8), dtype=np.float32)), "image.npy",
                      "modalities.image.file", "a sample holds 0 values"),
    "sequence too large": (limit(20), "audio_offsets.npy", "modalities.audio.offsets", "frames of 5 values"),
    "frames without features": (save("audio_values.npy", lambda root: np.zeros(
                                    (np.load(root / "audio_offsets.npy")[-1], 0), dtype=np.float32)),
                                "audio_values.npy", "modalities.audio.values", "with 1 <= F <="),
    "negative split seed": (spec_edit(lambda s: s.update(splits={"seed": -1})), "dataset.yaml", "splits.seed",
                            "expected an integer >= 0"),
    "NaN split fraction": (spec_edit(lambda s: s.update(splits={"fractions": [float("nan"), 0.5, 0.5]})),
                           "dataset.yaml", "splits.fractions", "three non-negative numbers summing to 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_hostile_folder_is_a_problem_naming_file_and_field(folder, monkeypatch, case):
    mutate, file, field, fragment = CASES[case]
    mutate(folder, monkeypatch)
    if file is None:
        file = yaml.safe_load((folder / "dataset.yaml").read_text())["tasks"]["score"]["file"]
    problems = check_dataset(folder)
    matching = [p for p in problems if p.file == file and p.field == field and fragment in p.message]
    assert matching, f"{case}: expected ({file}, {field}, ...{fragment}...), got {problems}"
    with pytest.raises(ValueError, match="is not a valid data folder"):
        FolderDataset(folder)


def test_a_scale_written_1e_minus_3_is_a_number_as_yaml_1_1_would_not_read_it(folder, monkeypatch):
    set_key("modalities", "image", scale="1e-3")(folder, monkeypatch)  # what `scale: 1e-3` loads as
    assert check_dataset(folder) == []
    raw = np.load(folder / "image.npy")[:2].astype(np.float32)
    loaded = FolderDataset(folder).read(np.array([0, 1])).inputs["image"]
    np.testing.assert_allclose(loaded.numpy(), raw * np.float32(1e-3), rtol=1e-6)


def test_the_unbroken_folder_and_symlinks_inside_it_are_fine(folder):
    assert check_dataset(folder) == []
    (folder / "raw").mkdir()
    (folder / "image.npy").rename(folder / "raw" / "image_v2.npy")
    (folder / "image.npy").symlink_to("raw/image_v2.npy")  # a symlink that stays inside is allowed
    assert check_dataset(folder) == []
    linked = folder.parent / "linked"
    linked.symlink_to(folder)  # so is a data folder that is itself a symlink
    assert check_dataset(linked) == []
    assert len(FolderDataset(linked).splits["train"]) > 0


def _spy_on_loads(monkeypatch) -> list[Path]:
    opened = []
    real_load = np.load
    monkeypatch.setattr(np, "load",
                        lambda file, *a, **k: opened.append(Path(file).resolve()) or real_load(file, *a, **k))
    return opened


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("case, field, name", [
    ("file with ..", "modalities.image.file", "../outside/image.npy"),
    ("symlink out", "tasks.flag.file", "labels/flag.npy"),
    ("symlinked folder out", "tasks.digit.file", "labels/digit.npy"),
    ("split file with ..", "splits.file", "../outside/split.npy"),
])
def test_the_loader_never_opens_a_file_outside_the_folder(folder, monkeypatch, check, case, field, name):
    CASES[case][0](folder, monkeypatch)
    opened = _spy_on_loads(monkeypatch)
    with pytest.raises(ValueError) as error:
        FolderDataset(folder, check=check)
    assert field in str(error.value) and repr(name) in str(error.value)
    outside = (folder.parent / "outside").resolve()
    assert opened and not [path for path in opened if outside in path.parents]


@pytest.mark.parametrize("name", ["../outside/labels/score.npy", "/etc/hostname", "labels/../../outside/split.npy"])
def test_the_loaders_own_guard_refuses_outside_paths_with_the_field(folder, name):
    data = FolderDataset(folder, check=False)
    with pytest.raises(ValueError, match=r"tasks\.extra\.file: .*" + name.replace(".", r"\.")):
        data._load(name, "tasks.extra.file")
    (folder / "escape.npy").symlink_to(folder.parent / "outside" / "image.npy")
    with pytest.raises(ValueError, match=r"modalities\.x\.file: 'escape\.npy' resolves to .* outside the data folder"):
        data._load("escape.npy", "modalities.x.file")
    assert data._load("labels/score.npy", "tasks.score.file").shape == (N,)


def test_with_check_false_yaml_problems_are_still_refused_without_scanning_values(folder, monkeypatch):
    set_key("modalities", "image", scale=float("nan"))(folder, monkeypatch)
    edit = np.load(folder / "labels" / "flag.npy")
    edit[3] = 7.0  # a bad value: found by the scan only
    np.save(folder / "labels" / "flag.npy", edit)
    with pytest.raises(ValueError, match=r"modalities\.image\.scale: expected a finite number") as error:
        FolderDataset(folder, check=False)
    assert "binary labels" not in str(error.value)
    assert [p.field for p in check_dataset(folder, scan=False)] == ["modalities.image.scale"]


def test_float64_values_that_fit_float32_once_scaled_stay_finite(folder, monkeypatch):
    save("image.npy", _image_with(1e39, np.float64))(folder, monkeypatch)
    set_key("modalities", "image", scale=1e-3)(folder, monkeypatch)
    assert check_dataset(folder) == []  # 1e39 * 1e-3 fits float32
    batch = FolderDataset(folder).read(np.arange(10))
    assert np.isfinite(batch.inputs["image"].numpy()).all()
    assert batch.inputs["image"][7, 0, 2, 2].item() == pytest.approx(1e36, rel=1e-6)


def test_sequence_stats_and_longest_sequences(folder):
    data = FolderDataset(folder)
    lengths = np.diff(np.load(folder / "audio_offsets.npy"))
    assert data.sequence_stats() == {"audio": {"shortest": int(lengths.min()), "longest": int(lengths.max()),
                                               "longest_row": int(lengths.argmax())}}
    assert data.longest_sequences() == {"audio": int(lengths.max())}


# -- the command line ----------------------------------------------------------------------------------
def test_data_check_cli_reports_an_outside_file_with_exit_1(folder, monkeypatch, capsys):
    assert cli_main(["data", "check", str(folder)]) == 0
    capsys.readouterr()
    CASES["file with .."][0](folder, monkeypatch)
    CASES["scale NaN"][0](folder, monkeypatch)
    assert cli_main(["data", "check", str(folder)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any(line.startswith("../outside/image.npy") and "modalities.image.file" in line for line in lines)
    assert any("modalities.image.scale" in line for line in lines)
    assert "2 problems" in captured.err
    assert cli_main(["data", "check", str(folder), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {(p["file"], p["field"]) for p in report["problems"]} == {
        ("../outside/image.npy", "modalities.image.file"), ("dataset.yaml", "modalities.image.scale")}


@pytest.mark.parametrize("argv, fragment", [
    (["{tmp}/nowhere"], "no such folder"),
    (["{tmp}/data/image.npy"], "no such folder"),
    (["{tmp}/data", "--config", "{tmp}/no_config.yaml"], "config '{tmp}/no_config.yaml' not found"),
    (["{tmp}/data", "--config", "not_a_shipped_config"], "shipped configs: "),
    (["{tmp}/data", "--set", "model.dim=8"], "--set overrides a config: give one with --config"),
    (["{tmp}/data", "--config", "{tmp}/fits.yaml", "--set", "model.encoders.audio.in_featurs=5"],
     "did you mean 'in_features'"),
    (["{tmp}/data", "--config", "{tmp}/fits.yaml", "--set", "model.encoders.audio.name=transformr"],
     "model.encoders.audio.name"),
    (["{tmp}/data", "--config", "{tmp}/fits.yaml", "--set", "model.encoders.audio.max_len=long"],
     "model.encoders.audio.max_len"),
])
def test_data_check_usage_errors_exit_2_with_one_line(folder, capsys, argv, fragment):
    tmp = str(folder.parent)
    (folder.parent / "fits.yaml").write_text(yaml.safe_dump(FITS))
    assert cli_main(["data", "check", *(arg.format(tmp=tmp) for arg in argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtmm: error: ") and err.count("\n") == 1 and fragment.format(tmp=tmp) in err


# -- against a config's model ------------------------------------------------------------------------------
FITS = {  # a config whose model fits make_folder's data: tasks left out, so they come from the data
    "model": {
        "dim": 16,
        "encoders": {"image": {"name": "cnn", "in_channels": 1, "channels": [8]},
                     "audio": {"name": "sequence_transformer", "in_features": 5, "depth": 1, "heads": 2,
                               "max_len": 16}},
        "fusion": {"name": "concat"},
    },
}
TASKS = {"digit": {"head": "classification", "num_classes": 4}, "flag": {"head": "binary"},
         "score": {"head": "regression"}}


def with_tasks(*overrides):
    return [f"model.tasks={json.dumps(TASKS)}", *overrides]


def _longest(root):
    return int(np.diff(np.load(root / "audio_offsets.npy")).max())


def drop(*path):
    def change(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


def binary_labels_of_width(k):
    def apply(root):
        np.save(root / "labels" / "flag.npy", np.zeros((N, k), dtype=np.float32))
    return apply


# case: (overrides or a change of the config dict, a change of the folder or None, field, fragment)
CONFIG_CASES = {
    "max_len exceeded": (["model.encoders.audio.max_len=3"], None, "model.encoders.audio.max_len",
                         "is 3, but the data's modality 'audio' has a sequence of {longest} frames"),
    "wrong in_features": (["model.encoders.audio.in_features=13"], None, "model.encoders.audio.in_features",
                          "is 13, but the data's modality 'audio' has samples [T, 5]: 5 features; set in_features: 5"),
    "wrong in_channels": (["model.encoders.image.in_channels=3"], None, "model.encoders.image.in_channels",
                          "is 3, but the data's modality 'image' has samples [1, 8, 8]: 1 channel"),
    "too many cnn stages": (["model.encoders.image.channels=[8, 8, 8, 8]"], None, "model.encoders.image.channels",
                            "has 4 stages, which need images of at least 16x16 pixels"),
    "cnn on a sequence": (["model.encoders.audio={name: cnn}"], None, "model.encoders.audio.name",
                          "encoder cnn takes images [C, H, W] per sample, but the data's modality 'audio' has samples "
                          "[T, 5]; use sequence_transformer with in_features: 5"),
    "sequence encoder on images": (["model.encoders.image={name: sequence_transformer, in_features: 8}"], None,
                                   "model.encoders.image.name", "takes frames [T, F]"),
    "patch image_size": (["model.encoders.image={name: patch_transformer, in_channels: 1, image_size: 32}"], None,
                         "model.encoders.image.image_size", "is 32, but the data's modality 'image' "
                                                            "has samples [1, 8, 8]: images 8x8; set image_size: 8"),
    "text on a folder": (["model.encoders.audio={name: text}"], None, "model.encoders.audio.name",
                         "gives float32 values"),
    "tabular with categories": (["model.encoders.image={name: tabular, num_numeric: 64, categories: [3]}"],
                                lambda root: np.save(root / "image.npy", np.zeros((N, 64), dtype=np.float32)),
                                "model.encoders.image.categories", "leave categories out"),
    "tabular width": (["model.encoders.image={name: tabular, num_numeric: 10}"],
                      lambda root: np.save(root / "image.npy", np.zeros((N, 64), dtype=np.float32)),
                      "model.encoders.image.num_numeric", "is 10, but the data's modality 'image' has samples [64]"),
    "encoder without data": (["model.encoders.audo={name: sequence_transformer, in_features: 5}"], None,
                             "model.encoders.audo", "the data has no modality 'audo' (its modalities: image, audio); "
                                                    "did you mean 'audio'?"),
    "wrong num_classes": (with_tasks("model.tasks.digit.num_classes=10"), None, "model.tasks.digit.num_classes",
                          "is 10, but the data's task 'digit' has 4 classes"),
    "wrong head kind": (with_tasks("model.tasks.flag.head=regression"), None, "model.tasks.flag.head",
                        "is regression, but the data's task 'flag' is binary; use head: binary"),
    "task not in data": (with_tasks("model.tasks.flags={head: binary}"), None, "model.tasks.flags",
                         "the data has no task 'flags'"),
    "num_labels for [N, K]": (with_tasks(), binary_labels_of_width(3), "model.tasks.flag.num_labels",
                              "is 1 (the default), but the data's task 'flag' has labels [N, 3]"),
    "tasks left out with [N, K]": ([], binary_labels_of_width(3), "model.tasks",
                                   "is left out, so task 'flag' gets a binary head with 1 output"),
}


# Sizes a config leaves out are inferred from the data (mtmm_core.data.infer_encoders): no problem, and the
# completed spec holds the data's value. case: (change of the config, change of the folder, encoder, key, value)
INFERRED_CASES = {
    "max_len beyond the default": (drop("model", "encoders", "audio", "max_len"), lambda root: _long_sequence(root, 600),
                                   "audio", "max_len", 600),
    "in_channels": (drop("model", "encoders", "image", "in_channels"),
                    lambda root: np.save(root / "image.npy", np.zeros((N, 3, 8, 8), dtype=np.float32)),
                    "image", "in_channels", 3),
    "patch image_size": (lambda c: c["model"]["encoders"].update(image={"name": "patch_transformer", "patch_size": 4}),
                         None, "image", "image_size", 8),
    "in_features": (drop("model", "encoders", "audio", "in_features"), None, "audio", "in_features", 5),
    "an encoder left out": (drop("model", "encoders", "audio"), None, "audio", "name", "sequence_transformer"),
}


@pytest.mark.parametrize("case", list(INFERRED_CASES))
def test_a_size_left_out_is_inferred_from_the_data(folder, case):
    from mtmm_core.data import infer_encoders
    from mtmm_core.userdata import FolderDataset

    change, change_folder, modality, key, value = INFERRED_CASES[case]
    if change_folder is not None:
        change_folder(folder)
    config = yaml.safe_load(yaml.safe_dump(FITS))
    change(config)
    assert check_against_config(folder, config) == []
    assert infer_encoders(config["model"], FolderDataset(folder))["encoders"][modality][key] == value


def _long_sequence(root, frames):
    """Give sample 2 of the audio ``frames`` frames."""
    lengths = np.diff(np.load(root / "audio_offsets.npy"))
    lengths[2] = frames
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.save(root / "audio_offsets.npy", offsets)
    np.save(root / "audio_values.npy", np.zeros((offsets[-1], 5), dtype=np.float32))


def test_the_fitting_config_fits(folder):
    assert check_against_config(folder, FITS) == []
    assert check_against_config(folder, FITS, with_tasks()) == []


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_each_mismatch_with_the_config_is_a_problem_naming_the_config_key(folder, case):
    change, change_folder, field, fragment = CONFIG_CASES[case]
    if change_folder is not None:
        change_folder(folder)
    config, overrides = yaml.safe_load(yaml.safe_dump(FITS)), []
    if callable(change):
        change(config)
    else:
        overrides = change
    fragment = fragment.format(longest=_longest(folder))
    problems = check_against_config(folder, config, overrides)
    matching = [p for p in problems if p.file == "config" and p.field == field and fragment in p.message]
    assert matching, f"{case}: expected (config, {field}, ...{fragment}...), got {problems}"


def test_max_len_problem_names_the_row_and_the_cli_prints_it(folder, capsys):
    (folder.parent / "short.yaml").write_text(yaml.safe_dump(FITS))
    assert cli_main(["data", "check", str(folder), "--config", str(folder.parent / "short.yaml")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{folder}: fits the model of config {folder.parent}/short.yaml"
    lengths = np.diff(np.load(folder / "audio_offsets.npy"))
    assert cli_main(["data", "check", str(folder), "--config", str(folder.parent / "short.yaml"),
                     "--set", "model.encoders.audio.max_len=3", "--json"]) == 1
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert problem == {"file": f"{folder.parent}/short.yaml", "field": "model.encoders.audio.max_len",
                       "row": int(lengths.argmax()), "message": problem["message"]}
    assert f"sequence of {lengths.max()} frames" in problem["message"]
    assert cli_main(["data", "check", str(folder), "--config", str(folder.parent / "short.yaml"),
                     "--set", "model.encoders.image.in_channels=3"]) == 1
    out = capsys.readouterr().out
    assert "model.encoders.image.in_channels" in out and "set in_channels: 1" in out


def test_a_broken_folder_reports_its_own_problems_before_the_config(folder, monkeypatch):
    CASES["symlink out"][0](folder, monkeypatch)
    problems = check_against_config(folder, FITS, ["model.encoders.audio.max_len=3"])
    assert [(p.file, p.field) for p in problems] == [("labels/flag.npy", "tasks.flag.file")]
    with pytest.raises(SpecError, match="model.encoders.image.in_chanels"):  # an unreadable config: before the scan
        check_against_config(folder, FITS, ["model.encoders.image.in_chanels=1"])


def test_training_can_fail_early_with_one_line_naming_modality_length_and_max_len(folder):
    data = FolderDataset(folder)
    config = validate_config({**FITS, "data": {"name": str(folder)}})
    spec = complete_model_spec(config["model"], data)
    require_model_fit(spec, data)  # fits: no error
    spec["encoders"]["audio"]["max_len"] = 3
    with pytest.raises(ValueError) as error:
        require_model_fit(spec, data)
    message = str(error.value)
    assert "\n" not in message
    assert "model.encoders.audio.max_len: is 3" in message and "modality 'audio'" in message
    assert f"sequence of {_longest(folder)} frames" in message
    assert check_model_fit(spec, data, source="run.yaml")[0].file == "run.yaml"
