"""Data folders (docs/data.md): loading, memory mapping, missing values, `mtmm data check`, training."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtmm_core.cli import main as cli_main
from mtmm_core.config import validate_config
from mtmm_core.data import load_dataset
from mtmm_core.trainer import Trainer
from mtmm_core.userdata import FolderDataset, check_dataset

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"
SPEC = {
    "modalities": {
        "image": {"kind": "array", "file": "image.npy", "scale": 0.5},
        "audio": {"kind": "sequence", "values": "audio_values.npy", "offsets": "audio_offsets.npy"},
    },
    "tasks": {
        "digit": {"kind": "classification", "num_classes": 4, "file": "labels/digit.npy"},
        "flag": {"kind": "binary", "file": "labels/flag.npy"},
        "score": {"kind": "regression", "file": "labels/score.npy"},
    },
    "splits": {"file": "split.npy"},
}


def make_folder(root: Path, n: int = 60) -> Path:
    """A valid folder with fresh random values: some audio of length 0, some labels missing."""
    rng = np.random.default_rng()
    (root / "labels").mkdir(parents=True)
    np.save(root / "image.npy", rng.normal(size=(n, 1, 8, 8)).astype(np.float32))
    lengths = rng.integers(0, 7, size=n)
    lengths[:3] = [0, 5, 0]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.save(root / "audio_offsets.npy", offsets)
    np.save(root / "audio_values.npy", rng.normal(size=(offsets[-1], 5)).astype(np.float32))
    digit = rng.integers(0, 4, size=n)
    digit[[1, 4]] = -1
    np.save(root / "labels" / "digit.npy", digit)
    flag = rng.integers(0, 2, size=n).astype(np.float32)
    flag[[2, 5]] = np.nan
    np.save(root / "labels" / "flag.npy", flag)
    score = rng.normal(size=n).astype(np.float32)
    score[[0, 6]] = np.nan
    np.save(root / "labels" / "score.npy", score)
    split = np.zeros(n, dtype=np.int8)
    split[rng.permutation(n)[: n // 2]] = rng.integers(1, 3, size=n // 2)
    split[:3] = [0, 1, 2]
    np.save(root / "split.npy", split)
    write_spec(root, SPEC)
    return root


def write_spec(root: Path, spec: dict) -> None:
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def edit(root: Path, name: str, change) -> None:
    """Load ``name``, let ``change`` modify (or return a replacement) and save it back."""
    array = np.load(root / name)
    replaced = change(array)
    np.save(root / name, array if replaced is None else replaced)


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data")


def test_a_valid_folder_loads_with_batches_of_the_right_shapes_lengths_and_masks(folder):
    assert check_dataset(folder) == []
    data = FolderDataset(folder)
    split = np.load(folder / "split.npy")
    assert {name: len(s) for name, s in data.splits.items()} == {
        name: int((split == code).sum()) for code, name in enumerate(["train", "validation", "test"])}
    assert data.modalities == {"image": {"kind": "array", "shape": [1, 8, 8]},
                               "audio": {"kind": "sequence", "shape": [None, 5]}}
    assert data.tasks["digit"] == {"kind": "classification", "num_classes": 4}
    assert data.tasks["flag"]["kind"] == "binary" and data.tasks["score"]["kind"] == "regression"

    train = data.splits["train"]
    rows = np.arange(len(train))[::-1][:9]
    batch = train.batch(rows)
    index = train.indices[rows]
    image = np.load(folder / "image.npy")
    offsets = np.load(folder / "audio_offsets.npy")
    values = np.load(folder / "audio_values.npy")
    lengths = offsets[index + 1] - offsets[index]
    assert batch.inputs["image"].dtype == torch.float32
    assert torch.allclose(batch.inputs["image"], torch.from_numpy(image[index] * 0.5))
    assert batch.inputs["audio"].shape == (9, max(1, lengths.max()), 5)
    assert batch.lengths["audio"].tolist() == lengths.tolist()
    for i, (row, length) in enumerate(zip(index, lengths)):
        assert torch.equal(batch.inputs["audio"][i, :length], torch.from_numpy(values[offsets[row]:offsets[row + 1]]))
        assert not batch.inputs["audio"][i, length:].any()  # zero padding
    assert batch.present["audio"].tolist() == (lengths > 0).tolist()
    assert batch.present["image"].all()
    assert batch.targets["digit"].dtype == torch.int64
    assert batch.targets["digit"].tolist() == np.load(folder / "labels/digit.npy")[index].clip(0).tolist()


def test_missing_labels_are_masked_with_finite_targets(folder):
    data = FolderDataset(folder)
    batch = data.read(np.arange(8))
    assert batch.task_masks["digit"].tolist() == [r not in (1, 4) for r in range(8)]
    assert batch.task_masks["flag"].tolist() == [r not in (2, 5) for r in range(8)]
    assert batch.task_masks["score"].tolist() == [r not in (0, 6) for r in range(8)]
    for task, target in batch.targets.items():
        assert torch.isfinite(target.float()).all(), task
    assert batch.targets["digit"][1] == 0 and batch.targets["flag"][2] == 0 and batch.targets["score"][0] == 0
    assert batch.present["audio"][0].item() is False and batch.present["audio"][1].item() is True


def test_arrays_are_memory_mapped_and_a_batch_reads_only_its_rows(folder, monkeypatch):
    modes = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: modes.append(k.get("mmap_mode")) or real_load(*a, **k))
    data = FolderDataset(folder)
    assert modes and set(modes) == {"r"}
    opened = [data._modalities["image"]["file"], data._modalities["audio"]["values"],
              data._modalities["audio"]["offsets"], *data._labels.values()]
    assert all(isinstance(array, np.memmap) for array in opened)


def test_random_splits_are_deterministic_per_seed(folder):
    sizes = []
    for seed in (3, 3, 4):
        spec = {**SPEC, "splits": {"seed": seed, "fractions": [0.5, 0.25, 0.25]}}
        write_spec(folder, spec)
        data = FolderDataset(folder)
        sizes.append({name: split.indices.tolist() for name, split in data.splits.items()})
    assert sizes[0] == sizes[1] and sizes[0] != sizes[2]
    assert [len(sizes[0][name]) for name in ("train", "validation", "test")] == [30, 15, 15]
    assert sorted(sum(sizes[0].values(), [])) == list(range(60))
    write_spec(folder, {**SPEC, "splits": {"fractions": [0.5, 0.25, 0.25]}})  # no seed: data.seed decides
    by_config = load_dataset({"name": str(folder), "seed": 3})
    assert {name: split.indices.tolist() for name, split in by_config.splits.items()} == sizes[0]
    with pytest.raises(ValueError, match="data.sede: not a parameter of a data folder"):
        load_dataset({"name": str(folder), "sede": 3})


# -- problems ------------------------------------------------------------------------------------------
def set_rows(name, rows, value):
    def change(array):
        array[rows] = value
    return name, change


def replace(name, make):
    return name, make


def spec_edit(change):
    def apply(root):
        spec = yaml.safe_load((root / "dataset.yaml").read_text())
        change(spec)
        write_spec(root, spec)
    return apply


def file_edit(name, change):
    return lambda root: edit(root, name, change)


def offsets_change(fn):
    return file_edit("audio_offsets.npy", fn)


def _decrease_at_7(o):
    o[8] = o[7] - 1


def _no_modality_at_9(root):
    np.save(root / "image_present.npy", np.arange(60) != 9)
    edit(root, "audio_offsets.npy", lambda o: _zero_length(o, 9))
    spec_edit(lambda s: s["modalities"]["image"].update(present="image_present.npy"))(root)


def _zero_length(offsets, row):
    """Make sample ``row`` of length 0 (moving its frames to the next sample)."""
    offsets[row + 1] = offsets[row]


CASES = {
    "yaml missing": (lambda r: (r / "dataset.yaml").unlink(), "dataset.yaml", "", None, "missing"),
    "yaml invalid": (lambda r: (r / "dataset.yaml").write_text("tasks: [unclosed\n"), "dataset.yaml", "", None,
                     "not valid YAML at line"),
    "unknown top key": (spec_edit(lambda s: s.update(taks={})), "dataset.yaml", "taks", None, "did you mean 'tasks'"),
    "unknown task key": (spec_edit(lambda s: s["tasks"]["digit"].update(num_clases=4)), "dataset.yaml",
                         "tasks.digit.num_clases", None, "did you mean 'num_classes'"),
    "unknown kind": (spec_edit(lambda s: s["modalities"]["image"].update(kind="arary")), "dataset.yaml",
                     "modalities.image.kind", None, "did you mean 'array'"),
    "missing file": (lambda r: (r / "labels/flag.npy").unlink(), "labels/flag.npy", "tasks.flag.file", None,
                     "file not found"),
    "wrong row count": (file_edit("labels/score.npy", lambda a: a[:-2]), "labels/score.npy", "tasks.score.file", None,
                        "has 58 rows, expected 60 (the number of samples in image.npy"),
    "wrong dtype": (file_edit("labels/digit.npy", lambda a: a.astype(str)), "labels/digit.npy", "tasks.digit.file",
                    None, "expected integer labels, got dtype <U"),
    "offsets start": (offsets_change(lambda o: o.__setitem__(0, 1)), "audio_offsets.npy", "modalities.audio.offsets", 0,
                      "the first offset is 1, expected 0"),
    "offsets decrease": (offsets_change(_decrease_at_7), "audio_offsets.npy", "modalities.audio.offsets", 7,
                         "offsets decrease"),
    "offsets end": (offsets_change(lambda o: o.__setitem__(-1, o[-1] + 3)), "audio_offsets.npy",
                    "modalities.audio.offsets", 60, "expected"),
    "class out of range": (file_edit("labels/digit.npy", lambda a: a.__setitem__([11, 23], [4, -2])),
                           "labels/digit.npy", "tasks.digit.file", 11, "rows 11, 23 (values 4, -2)"),
    "class not integer": (file_edit("labels/digit.npy", lambda a: np.where(np.arange(60) == 13, 1.5, a)),
                          "labels/digit.npy", "tasks.digit.file", 13, "not integers at row 13 (values 1.5)"),
    "binary not 0/1": (file_edit("labels/flag.npy", lambda a: a.__setitem__(17, 2.0)), "labels/flag.npy",
                       "tasks.flag.file", 17, "binary labels other than 0, 1 and NaN"),
    "regression infinite": (file_edit("labels/score.npy", lambda a: a.__setitem__(19, np.inf)), "labels/score.npy",
                            "tasks.score.file", 19, "infinite"),
    "non-finite image": (file_edit("image.npy", lambda a: a.__setitem__((slice(21, 23), 0, 3, 3), np.nan)),
                         "image.npy", "modalities.image.file", 21, "rows 21, 22"),
    "no modality present": (_no_modality_at_9, "dataset.yaml", "modalities", 9, "no modality is present for row 9"),
    "split codes": (file_edit("split.npy", lambda a: a.__setitem__(25, 3)), "split.npy", "splits.file", 25,
                    "split codes outside {0, 1, 2} at row 25 (values 3)"),
    "empty train split": (file_edit("split.npy", lambda a: np.where(a == 0, 1, a).astype(np.int8)), "split.npy",
                          "splits.file", None, "the train split is empty"),
    "present not 0/1": (lambda r: (np.save(r / "p.npy", np.full(60, 2)),
                                   spec_edit(lambda s: s["modalities"]["audio"].update(present="p.npy"))(r)),
                        "p.npy", "modalities.audio.present", 0, "values other than 0 and 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_reported_with_file_field_and_row(folder, case):
    mutate, file, field, row, text = CASES[case]
    mutate(folder)
    problems = check_dataset(folder)
    matching = [p for p in problems if p.file == file and p.field == field and p.row == row and text in p.message]
    assert matching, f"{case}: expected ({file}, {field}, {row}, ...{text}...), got {problems}"


def test_several_problems_are_reported_together_and_chunking_finds_the_same_rows(folder):
    chosen = ["unknown task key", "wrong row count", "offsets decrease", "class out of range", "binary not 0/1",
              "non-finite image", "split codes"]
    for case in chosen:
        CASES[case][0](folder)
    problems = check_dataset(folder)
    for case in chosen:
        _, file, field, row, text = CASES[case]
        assert any(p.file == file and p.field == field and p.row == row and text in p.message for p in problems), case
    small = check_dataset(folder, chunk_bytes=40)  # a few rows per read: problems straddle chunks
    assert [(p.file, p.field, p.row, p.message) for p in small] == [(p.file, p.field, p.row, p.message) for p in problems]
    with pytest.raises(ValueError) as error:
        FolderDataset(folder)
    assert f"{len(problems)} problems" in str(error.value)
    for problem in problems:
        assert str(problem) in str(error.value)


# -- command line and training ---------------------------------------------------------------------------
def test_data_check_cli_exit_codes_and_output(folder, capsys):
    assert cli_main(["data", "check", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "ok, 60 samples" in out and "audio (sequence [T, 5]" in out and "digit (classification, 4 classes)" in out
    assert re.search(r"splits train \d+, validation \d+, test \d+", out)

    CASES["class out of range"][0](folder)
    CASES["missing file"][0](folder)
    assert cli_main(["data", "check", str(folder)]) == 1
    captured = capsys.readouterr()
    header, *lines = captured.out.splitlines()
    assert header.split() == ["FILE", "FIELD", "ROW", "PROBLEM"]
    assert any(line.startswith("labels/digit.npy") and " 11 " in line for line in lines)
    assert any(line.startswith("labels/flag.npy") and "file not found" in line for line in lines)
    assert "2 problems" in captured.err

    assert cli_main(["data", "check", str(folder), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["summary"] is None
    assert {"file": "labels/digit.npy", "field": "tasks.digit.file", "row": 11} == {
        k: report["problems"][0][k] for k in ("file", "field", "row")}
    assert cli_main(["data", "check", str(folder.parent / "nowhere")]) == 2  # a usage error, not a problem
    assert capsys.readouterr().err.startswith(f"mtmm: error: {folder.parent / 'nowhere'}: no such folder")


def docs_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_docs_example_writes_a_valid_folder_and_trains_with_the_docs_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for code in docs_blocks("python"):
        exec(compile(code, f"{DOC} example", "exec"), {"__name__": "docs_example"})
    folder = tmp_path / "my_data"
    assert check_dataset(folder) == []
    assert isinstance(load_dataset({"name": str(folder)}), FolderDataset)

    config = yaml.safe_load(docs_blocks("yaml")[-1])
    config["data"]["name"] = str(folder)
    model = config["model"]
    model["dim"] = 16
    model["encoders"]["image"]["channels"] = [8]
    model["encoders"]["audio"].update(depth=1, heads=2)
    config["train"] = {"epochs": 1, "batch_size": 64, "progress": False, "device": "cpu"}
    metrics = Trainer(validate_config(config), tmp_path / "run").run()
    assert {"digit.accuracy", "loud.accuracy", "age.mae", "loss"} <= set(metrics)
    assert all(math.isfinite(value) for value in metrics.values())
    assert (tmp_path / "run" / "test_metrics.json").is_file()
    assert os.path.isdir(folder)
