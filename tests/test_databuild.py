"""`mtmm data build`: the schema, each feature kind's preprocessing (learned from the training rows only,
checked against values computed here), targets, splits, and the folder format's id modalities."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

pd = pytest.importorskip("pandas")

from mtmm_core.databuild import RowsDataset, SchemaError, build_data, parse_schema  # noqa: E402
from mtmm_core.errors import UsageError  # noqa: E402
from mtmm_core.userdata import FolderDataset, check_dataset  # noqa: E402

SPLIT = ["train"] * 6 + ["validation"] * 2 + ["test"] * 2


def table(**columns):
    return pd.DataFrame({**columns, "split": SPLIT, "y": [0, 1] * 5})


def build(tmp_path, frame, features, targets=None, name="out"):
    schema = {"features": features, "targets": targets or {"y": {"kind": "classification", "column": "y"}},
              "split": {"column": "split"}}
    out = build_data(frame, schema, tmp_path / name)
    return FolderDataset(out), yaml.safe_load((out / "dataset.yaml").read_text())


def all_rows(dataset, name):
    batch = dataset.read(np.arange(dataset.num_samples))
    return batch.inputs[name].numpy(), batch.present[name].numpy()


# -- number ------------------------------------------------------------------------------------------------
AGE = [20.0, 30.0, np.nan, 50.0, 40.0, 31.0, 1000.0, np.nan, -500.0, 7.0]  # rows 6..9: not training rows


@pytest.mark.parametrize("missing", ["mean", "median", "constant", "absent"])
def test_number_zscore_uses_the_training_rows_only_and_the_missing_strategy(tmp_path, missing):
    features = {"age": {"kind": "number", "column": "age", "missing": missing, "fill": -3.0}}
    if missing == "absent":
        with pytest.raises(UsageError, match="rows 2, 7 have no feature present"):
            build(tmp_path, table(age=AGE), features, name="refused")
        features["other"] = {"kind": "number", "column": "y"}  # every row needs a feature present
    dataset, spec = build(tmp_path, table(age=AGE), features)
    train = np.array([v for v in AGE[:6] if v == v], dtype=np.float64)
    mean, std = train.mean(), train.std()  # population std (ddof 0) of the training rows
    fill = {"mean": mean, "median": np.median(train), "constant": -3.0, "absent": mean}[missing]
    expected = (np.where(np.isnan(AGE), fill, AGE) - mean) / std
    values, present = all_rows(dataset, "age")
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-6)
    assert present.tolist() == [missing != "absent" or v == v for v in AGE]
    fitted = spec["preprocessing"]["features"]["age"]["fitted"]
    assert fitted["center"] == [pytest.approx(mean)] and fitted["scale"] == [pytest.approx(std)]


def test_number_minmax_and_several_columns_in_one_modality(tmp_path):
    income = [1e4, 2e4, 3e4, 5e4, 4e4, 2.5e4, 9e4, 1e3, 2e4, 3e4]
    dataset, _ = build(tmp_path, table(age=AGE, income=income),
                       {"numbers": {"kind": "number", "columns": ["age", "income"], "scaling": "minmax"}})
    values, _ = all_rows(dataset, "numbers")
    assert values.shape == (10, 2)
    low, high = min(income[:6]), max(income[:6])
    np.testing.assert_allclose(values[:, 1], (np.asarray(income) - low) / (high - low), rtol=1e-6)
    assert dataset.modalities["numbers"]["shape"] == [2]


def test_a_cell_that_is_not_a_number_names_the_column_and_the_row(tmp_path):
    with pytest.raises(UsageError, match=r"column 'age' \(feature 'age', kind number\), row 3: 'old' is not a number"):
        build(tmp_path, table(age=[1, 2, 3, "old", 5, 6, 7, 8, 9, 10]), {"age": {"kind": "number", "column": "age"}})


# -- category and set --------------------------------------------------------------------------------------
def test_category_vocabulary_from_training_rows_with_unknown_bucket_and_min_count(tmp_path):
    color = ["red", "blue", "red", "green", None, "blue", "purple", "red", "blue", None]
    dataset, spec = build(tmp_path, table(color=color), {"color": {"kind": "category", "column": "color",
                                                                    "min_count": 2}})
    # training rows 0..5: red 2, blue 2, green 1 (< min_count) -> vocabulary [blue, red] = ids 1, 2
    assert spec["preprocessing"]["features"]["color"]["fitted"]["vocabularies"] == [["blue", "red"]]
    assert spec["modalities"]["color"] == {"kind": "array", "file": "color.npy", "dtype": "int64", "vocab_sizes": [3]}
    ids, present = all_rows(dataset, "color")
    assert ids.dtype == np.int64 and ids[:, 0].tolist() == [2, 1, 2, 0, 0, 1, 0, 2, 1, 0]  # purple: validation only
    assert present.all()


def test_category_missing_absent(tmp_path):
    dataset, _ = build(tmp_path, table(color=["a", "b", None, "a", "b", "a", "b", "a", None, "c"]),
                       {"color": {"kind": "category", "column": "color", "missing": "absent"},
                        "n": {"kind": "number", "column": "y"}})
    _, present = all_rows(dataset, "color")
    assert present.tolist() == [True, True, False, True, True, True, True, True, False, True]


def test_set_is_multi_hot_over_the_training_items(tmp_path):
    tags = ["a|b", "b", "", "c|a", "a", "b", "z|a", "b", "a", "c"]
    dataset, spec = build(tmp_path, table(tags=tags), {"tags": {"kind": "set", "column": "tags"}})
    assert spec["preprocessing"]["features"]["tags"]["fitted"]["vocabulary"] == ["a", "b", "c"]
    hot, _ = all_rows(dataset, "tags")
    assert hot.shape == (10, 4)
    assert hot[0].tolist() == [0, 1, 1, 0] and hot[2].tolist() == [0, 0, 0, 0] and hot[6].tolist() == [1, 1, 0, 0]


# -- vector, sequence, text --------------------------------------------------------------------------------
def test_vector_and_sequence_standardised_per_feature_on_training_rows(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(5, 3, size=(10, 3))
    frames = [rng.normal(100, 10, size=(1 + i % 3, 2)) for i in range(10)]
    dataset, _ = build(tmp_path, table(v=[" ".join(map(str, row)) for row in vectors],
                                       s=["; ".join(" ".join(map(str, f)) for f in fr) for fr in frames]),
                       {"v": {"kind": "vector", "column": "v"}, "s": {"kind": "sequence", "column": "s"}})
    values, _ = all_rows(dataset, "v")
    np.testing.assert_allclose(values, (vectors - vectors[:6].mean(0)) / vectors[:6].std(0), rtol=1e-5, atol=1e-6)
    train_frames = np.concatenate(frames[:6])
    batch = dataset.read(np.array([7]))
    expected = (frames[7] - train_frames.mean(0)) / train_frames.std(0)
    np.testing.assert_allclose(batch.inputs["s"][0, :len(frames[7])].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert int(batch.lengths["s"][0]) == len(frames[7])


def test_text_byte_ids_cut_at_the_longest_training_text(tmp_path):
    texts = ["hi", "héllo", None, "abc", "", "x", "a much longer validation text", "ok", "no", "yes"]
    dataset, spec = build(tmp_path, table(t=texts), {"t": {"kind": "text", "column": "t"},
                                                      "n": {"kind": "number", "column": "y"}})
    fitted = spec["preprocessing"]["features"]["t"]["fitted"]
    assert fitted == {"max_len": 6, "vocab_size": 257}  # "héllo" is 6 bytes
    batch = dataset.read(np.array([1, 2, 6]))
    ids = batch.inputs["t"]
    assert ids.dtype.is_floating_point is False and batch.lengths["t"].tolist() == [6, 0, 6]
    assert ids[0].tolist() == [b + 1 for b in "héllo".encode()]
    assert ids[2].tolist() == [b + 1 for b in b"a much"]
    assert batch.present["t"].tolist() == [True, False, True]  # a missing text: an absent modality


# -- targets and split -------------------------------------------------------------------------------------
def test_targets_missing_labels_and_class_names(tmp_path):
    frame = table(x=list(range(10)))
    frame["kind"] = ["cat", "dog", None, "cat", "bird", "dog", "cat", "dog", "bird", None]
    frame["flag"] = ["yes", "no", "yes", None, "no", "yes", "no", "no", "yes", "no"]
    frame["price"] = [1.5, None, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    dataset, spec = build(tmp_path, frame, {"x": {"kind": "number", "column": "x"}},
                          {"kind": {"kind": "classification", "column": "kind"},
                           "flag": {"kind": "binary", "column": "flag"},
                           "price": {"kind": "regression", "column": "price"}})
    assert spec["preprocessing"]["targets"]["kind"]["classes"] == ["bird", "cat", "dog"]
    assert dataset.tasks["kind"] == {"kind": "classification", "num_classes": 3}
    batch = dataset.read(np.arange(10))
    assert batch.targets["kind"].tolist()[:3] == [1, 2, 0] and batch.task_masks["kind"].tolist()[2] is False
    assert batch.targets["flag"].tolist()[:3] == [1.0, 0.0, 1.0] and not batch.task_masks["flag"][3]
    assert not batch.task_masks["price"][1] and batch.targets["price"][0] == pytest.approx(1.5)


def test_random_split_and_an_empty_split_is_refused(tmp_path):
    frame = pd.DataFrame({"x": range(20), "y": [0, 1] * 10})
    schema = {"features": {"x": {"kind": "number", "column": "x"}},
              "targets": {"y": {"kind": "binary", "column": "y"}}, "split": {"seed": 3, "fractions": [0.5, 0.25, 0.25]}}
    dataset = FolderDataset(build_data(frame, schema, tmp_path / "a"))
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 10, "validation": 5, "test": 5}
    schema["split"] = {"fractions": [1.0, 0.0, 0.0]}
    with pytest.raises(UsageError, match="leaves validation empty"):
        build_data(frame, schema, tmp_path / "b")


# -- schema errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature, field, fragment", [
    ({"kind": "imgae", "column": "a"}, "features.f.kind", "did you mean 'image'?"),
    ({"kind": "number", "column": "a", "scalng": "zscore"}, "features.f.scalng", "did you mean 'scaling'?"),
    ({"kind": "number", "column": "ag"}, "features.f.column", "the table has no column 'ag'; did you mean 'a'?"),
    ({"kind": "number", "column": "a", "scaling": "zscor"}, "features.f.scaling", "Valid values: zscore, minmax, none"),
    ({"kind": "category", "column": "a", "missing": "mean"}, "features.f.missing", "Valid values: unknown, absent"),
    ({"kind": "text", "columns": ["a"]}, "features.f.columns", "a text feature reads one column"),
])
def test_schema_errors_name_the_field_and_the_valid_values(feature, field, fragment):
    schema = {"features": {"f": feature}, "targets": {"y": {"kind": "binary", "column": "y"}}}
    with pytest.raises(SchemaError) as caught:
        parse_schema(schema, ["a", "y"])
    assert caught.value.field == field and fragment in str(caught.value)


def test_parquet_csv_and_dataframe_build_the_same_folder(tmp_path):
    pytest.importorskip("pyarrow")
    frame = table(age=AGE, color=["a", "b"] * 5)
    features = {"age": {"kind": "number", "column": "age"}, "color": {"kind": "category", "column": "color"}}
    schema = {"features": features, "targets": {"y": {"kind": "classification", "column": "y"}},
              "split": {"column": "split"}}
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    built = [FolderDataset(build_data(source, schema, tmp_path / f"out{i}"))
             for i, source in enumerate([frame, tmp_path / "t.csv", tmp_path / "t.parquet"])]
    reads = [d.read(np.arange(10)) for d in built]
    for other in reads[1:]:
        for name in ("age", "color"):
            assert np.array_equal(reads[0].inputs[name].numpy(), other.inputs[name].numpy())


def test_new_rows_go_through_the_stored_preprocessing(tmp_path):
    dataset, spec = build(tmp_path, table(age=AGE, color=["a", "b"] * 5),
                          {"age": {"kind": "number", "column": "age"}, "color": {"kind": "category", "column": "color"}})
    new = pd.DataFrame({"age": [AGE[3], None], "color": ["b", "never seen"]})
    rows = RowsDataset(new, spec["preprocessing"])
    batch = rows.splits["rows"].batch([0, 1])
    built = dataset.read(np.array([3, 1]))
    assert batch.inputs["age"][0].item() == pytest.approx(built.inputs["age"][0].item())
    assert batch.inputs["color"].tolist() == [[2], [0]]  # "never seen" -> the unknown bucket
    assert not batch.task_masks["y"].any()  # no target column: missing labels


# -- the folder format's ids ---------------------------------------------------------------------------------
def test_id_modalities_are_checked(tmp_path):
    dataset, spec = build(tmp_path, table(color=["a", "b"] * 5), {"color": {"kind": "category", "column": "color"}})
    root = tmp_path / "out"
    np.save(root / "color.npy", np.array([[0], [1], [2], [3]] + [[1]] * 6, dtype=np.int64))
    problems = check_dataset(root)
    assert any(p.field == "modalities.color.file" and "ids out of range" in p.message and p.row == 3 for p in problems)
    spec["modalities"]["color"]["dtype"] = "float32"
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    assert any(p.field == "modalities.color.vocab_sizes" for p in check_dataset(root))


def test_text_with_a_tokenizer_folder_uses_its_ids_and_vocabulary(tmp_path, monkeypatch):
    from mtmm_core.data import complete_model_spec
    from mtmm_core.data_fit import check_model_fit
    from mtmm_core.databuild import decode

    class Tokenizer:  # stands in for transformers.AutoTokenizer.from_pretrained("tok")
        def __len__(self):
            return 1000

        def __call__(self, texts, truncation, max_length):  # a list of texts, as a transformers tokenizer takes
            assert truncation and isinstance(texts, list)
            return {"input_ids": [[500 + len(word) for word in text.split()][:max_length] for text in texts]}

    monkeypatch.setitem(decode._TOKENIZERS, "tok", Tokenizer())
    dataset, spec = build(tmp_path, table(t=["a bb ccc"] * 10),
                          {"t": {"kind": "text", "column": "t", "tokenizer": "tok", "max_len": 2}})
    assert spec["modalities"]["t"]["vocab_sizes"] == [1000]
    assert dataset.read(np.array([0])).inputs["t"].tolist() == [[501, 502]]
    # the built-in text encoder embeds bytes only: a tokenizer's ids need an encoder made for it
    problems = check_model_fit(complete_model_spec({"encoders": {"t": {"name": "text"}}}, dataset), dataset)
    assert any("a vocabulary of 1000 ids" in p.message and p.field == "model.encoders.t.name" for p in problems)
