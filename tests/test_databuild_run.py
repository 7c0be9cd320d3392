"""Tables in, end to end: image and audio columns, `mtmm data check`'s statistics and warnings, sizes
inferred from the data (and a wrong one refused before training), build -> train -> predict on raw rows,
and the worked example of docs/tables.md run as written."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

pd = pytest.importorskip("pandas")

from mtmm_core.cli import main as cli_main  # noqa: E402
from mtmm_core.databuild import build_data  # noqa: E402
from mtmm_core.userdata import FolderDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def image_table(tmp_path, rows=24):
    """Rows with a PNG (written with Pillow), a text, two numbers and two targets; row 3 has no photo."""
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    records = []
    for i in range(rows):
        pixels = rng.integers(0, 256, size=(12 + i % 3, 10, 3), dtype=np.uint8)  # sizes differ: resized, cropped
        image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
        records.append({"photo": "" if i == 3 else f"img/{i}.png", "note": f"row {i}" if i % 4 else None,
                        "a": float(i), "b": 1000.0 * i, "label": ["x", "y", "z"][i % 3],
                        "score": float(i % 5) if i % 6 else None,
                        "split": "train" if i < rows - 8 else "validation" if i < rows - 4 else "test"})
    frame = pd.DataFrame(records)
    frame.to_csv(tmp_path / "table.csv", index=False)
    schema = {"features": {"photo": {"kind": "image", "column": "photo", "size": 8},
                           "note": {"kind": "text", "column": "note"},
                           "numbers": {"kind": "number", "columns": ["a", "b"]}},
              "targets": {"label": {"kind": "classification", "column": "label"},
                          "score": {"kind": "regression", "column": "score"}},
              "split": {"column": "split"}}
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    return frame


def test_image_column_resized_cropped_and_normalised_with_training_statistics(tmp_path):
    image = pytest.importorskip("PIL.Image")
    image_table(tmp_path)
    dataset = FolderDataset(build_data(tmp_path / "table.csv", tmp_path / "schema.yaml", tmp_path / "out"))
    pixels = []
    for i in range(16):  # the training rows with a photo, decoded here as the schema says
        if i == 3:
            continue
        with image.open(tmp_path / "img" / f"{i}.png") as opened:
            rgb = opened.convert("RGB")
            scale = 8 / min(rgb.size)
            size = (max(8, round(rgb.size[0] * scale)), max(8, round(rgb.size[1] * scale)))
            rgb = rgb.resize(size, image.Resampling.BICUBIC)
            left, top = (size[0] - 8) // 2, (size[1] - 8) // 2
            pixels.append(np.asarray(rgb.crop((left, top, left + 8, top + 8)), dtype=np.float64) / 255)
    pixels = np.stack(pixels)  # [n, 8, 8, 3]
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
    batch = dataset.read(np.array([0, 3]))
    expected = ((pixels[0] - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(batch.inputs["photo"][0].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert batch.present["photo"].tolist() == [True, False]  # row 3: no photo, an absent modality


def test_an_unreadable_image_names_the_column_and_the_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a DataFrame's relative paths are relative to the working folder
    frame = image_table(tmp_path)
    frame.loc[5, "photo"] = "img/missing.png"
    with pytest.raises(Exception, match=r"column 'photo' \(feature 'photo', kind image\), row 5: cannot read"):
        build_data(frame, tmp_path / "schema.yaml", tmp_path / "out")


def test_audio_column_resampled_to_log_mel_frames(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    pytest.importorskip("soxr")
    from mtmm_core.databuild.decode import log_mel, mel_filterbank

    rate = 8000
    paths = []
    for i in range(10):
        tone = np.sin(2 * np.pi * (200 + 50 * i) * np.arange(rate // 4 + 100 * i) / rate)
        soundfile.write(tmp_path / f"{i}.wav", tone, rate)
        paths.append(f"{i}.wav" if i != 2 else None)
    frame = pd.DataFrame({"clip": paths, "y": [0, 1] * 5, "split": ["train"] * 6 + ["validation"] * 2 + ["test"] * 2})
    schema = {"features": {"clip": {"kind": "audio", "column": "clip", "n_mels": 20},
                           "other": {"kind": "number", "column": "y"}},
              "targets": {"y": {"kind": "binary", "column": "y"}}, "split": {"column": "split"}}
    frame.to_csv(tmp_path / "t.csv", index=False)
    dataset = FolderDataset(build_data(tmp_path / "t.csv", schema, tmp_path / "out"))
    assert dataset.modalities["clip"]["shape"] == [None, 20]
    batch = dataset.read(np.array([0, 2]))
    resampled = len(np.arange(rate // 4)) * 2  # 8 kHz -> 16 kHz
    assert int(batch.lengths["clip"][0]) == 1 + (resampled - 400) // 160 and int(batch.lengths["clip"][1]) == 0
    bank = mel_filterbank(16000, 400, 20)
    mel_top = 2595 * np.log10(1 + 8000 / 700)
    centres = 700 * (10 ** (np.linspace(0, mel_top, 22)[1:-1] / 2595) - 1)  # the HTK mel scale, by hand
    bins = np.linspace(0, 8000, 201)  # 40 Hz apart
    assert bank.shape == (20, 201) and (bank >= 0).all()
    assert np.abs(bins[bank.argmax(axis=1)] - centres).max() <= 20  # each filter peaks at its centre
    tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert log_mel(tone, 16000, 400, 160, 20).mean(axis=0).argmax() == np.abs(centres - 1000).argmin()
    assert log_mel(np.zeros(100), 16000, 400, 160, 20).shape == (1, 20)  # a short clip: one padded frame


def test_audio_with_a_feature_extractor_folder_uses_its_frames(tmp_path, monkeypatch):
    soundfile = pytest.importorskip("soundfile")
    from mtmm_core.databuild import decode

    def extractor(samples, sampling_rate, return_tensors):  # stands in for AutoFeatureExtractor.from_pretrained
        assert sampling_rate == 16000 and return_tensors == "np"
        return {"input_features": np.full((1, 5, 1 + len(samples) // 4000), 2.0)}  # [1, F, T]

    monkeypatch.setitem(decode._TOKENIZERS, "features:fx", extractor)
    for i in range(10):
        soundfile.write(tmp_path / f"{i}.wav", np.zeros(4000 * (1 + i % 3)), 16000)
    frame = pd.DataFrame({"clip": [f"{i}.wav" for i in range(10)], "y": [0, 1] * 5,
                          "split": ["train"] * 6 + ["validation"] * 2 + ["test"] * 2})
    frame.to_csv(tmp_path / "t.csv", index=False)
    schema = {"features": {"clip": {"kind": "audio", "column": "clip", "feature_extractor": "fx"}},
              "targets": {"y": {"kind": "binary", "column": "y"}}, "split": {"column": "split"}}
    dataset = FolderDataset(build_data(tmp_path / "t.csv", schema, tmp_path / "out"))
    batch = dataset.read(np.array([0, 1]))
    assert batch.lengths["clip"].tolist() == [2, 3] and dataset.modalities["clip"]["shape"] == [None, 5]
    assert (batch.inputs["clip"][1] == 2.0).all()  # the extractor's frames, [T, F], not normalised again


def test_data_check_warns_about_badly_scaled_features_and_prints_statistics(tmp_path, capsys):
    root = tmp_path / "raw"
    (root / "labels").mkdir(parents=True)
    raw = np.stack([np.linspace(0, 17572, 30), np.linspace(-1, 1, 30)], axis=1)
    np.save(root / "x.npy", raw)
    np.save(root / "labels" / "y.npy", np.arange(30) % 2)
    (root / "dataset.yaml").write_text("modalities: {x: {kind: array, file: x.npy}}\n"
                                       "tasks: {y: {kind: classification, num_classes: 2, file: labels/y.npy}}\n")
    assert cli_main(["data", "check", str(root), "--stats"]) == 0
    out = capsys.readouterr().out
    assert f"warning: modality 'x': 1 of 2 features badly scaled (|mean| or std beyond 1000): feature 0: " \
           f"mean {raw[:, 0].mean():.4g}, std {raw[:, 0].std():.4g}, range 0..1.757e+04" in out
    assert re.search(rf"x\s+1\s+30\s+\S+\s+{raw[:, 1].std():.4g}\s+-1\s+1\n", out)  # the statistics of feature 1
    np.save(root / "x.npy", raw / raw.std(axis=0))
    assert cli_main(["data", "check", str(root)]) == 0
    assert "warning" not in capsys.readouterr().out


def test_sizes_are_inferred_and_a_wrong_one_fails_before_training(tmp_path):
    from mtmm_core.data import complete_model_spec
    from mtmm_core.data_fit import require_model_fit

    image_table(tmp_path)
    dataset = FolderDataset(build_data(tmp_path / "table.csv", tmp_path / "schema.yaml", tmp_path / "out"))
    spec = complete_model_spec({"dim": 8, "encoders": {"photo": {"channels": [4]}}}, dataset)
    assert spec["encoders"]["photo"] == {"name": "cnn", "channels": [4], "in_channels": 3}
    assert spec["encoders"]["numbers"] == {"name": "tabular", "num_numeric": 2}
    assert spec["encoders"]["note"]["name"] == "text" and spec["tasks"]["label"]["num_classes"] == 3
    require_model_fit(spec, dataset)
    wrong = complete_model_spec({"dim": 8, "encoders": {"numbers": {"name": "tabular", "num_numeric": 76}}}, dataset)
    with pytest.raises(ValueError, match=r"model.encoders.numbers.num_numeric: is 76, but the data's modality "
                                         r"'numbers' has samples \[2\]: 2 features; set num_numeric: 2"):
        require_model_fit(wrong, dataset)


def test_build_train_predict_on_raw_rows_equals_predict_on_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    frame = image_table(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"name": "table.csv", "schema": "schema.yaml"},
        "model": {"dim": 8, "encoders": {"photo": {"channels": [4]}, "note": {"depth": 1, "heads": 2}}},
        "train": {"epochs": 1, "batch_size": 8}}))
    assert cli_main(["train", "config.yaml", "--out", "run"]) == 0
    assert (tmp_path / "run" / "preprocessing.yaml").is_file()
    assert cli_main(["predict", "run", "--data", "table.csv.mtmm", "--out", "folder.npz"]) == 0
    frame.drop(columns=["label", "score", "split"]).to_csv("new.csv", index=False)  # raw rows, no targets
    shutil.rmtree("table.csv.mtmm")  # the run's own preprocessing.yaml is enough
    assert cli_main(["predict", "run", "--data", "new.csv", "--out", "raw.npz"]) == 0
    folder, raw = np.load("folder.npz"), np.load("raw.npz")
    order = np.argsort(folder["row"])
    assert raw["row"].tolist() == list(range(len(frame)))
    for key in ("label", "score"):
        np.testing.assert_allclose(raw[key], folder[key][order], rtol=1e-5, atol=1e-5)
    assert set(raw["label.class"]) <= {"x", "y", "z"}
    assert (np.asarray(["x", "y", "z"])[raw["label.label"]] == raw["label.class"]).all()
    from mtmm_core import load_run

    in_python = load_run("run").predict("new.csv")  # the same from Python
    np.testing.assert_allclose(in_python["score"], raw["score"], rtol=1e-6)


def test_the_worked_example_of_docs_tables_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("PIL.Image")
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "tables.md").read_text()
    for kind, code in re.findall(r"```(python|console)\n(.*?)```", text, flags=re.S):
        if kind == "python":
            exec(compile(code, "docs/tables.md", "exec"), {"__name__": "docs_example"})
            continue
        for line in code.splitlines():
            assert line.startswith("$ mtmm "), line
            assert cli_main(shlex.split(line[len("$ mtmm "):])) == 0, line
    predictions = np.load("new_predictions.npz")
    assert predictions["row"].tolist() == [0, 1, 2, 3, 4] and predictions["price"].shape == (5,)
    assert set(predictions["label.class"]) <= {"shoe", "hat", "bag"}
    model = yaml.safe_load(Path("products_run/model.yaml").read_text())
    assert model["encoders"]["photo"]["in_channels"] == 3 and model["encoders"]["color"]["categories"] == [5]
    assert model["encoders"]["numbers"] == {"name": "tabular", "num_numeric": 2}
    assert Path("products.csv.mtmm/dataset.yaml").is_file() and Path("numbers_only/dataset.yaml").is_file()
