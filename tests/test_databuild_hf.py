"""A Hugging Face tokenizer and feature extractor wired into the table build, end to end (docs/tables.md,
"A text column through a local BERT"): a table is built with ``tokenizer:`` / ``feature_extractor:`` folders
that ``save_pretrained`` wrote here, a model with the ``hf`` encoder trains on it, and new raw rows predict.

Nothing is downloaded. The references are the library's own objects, called directly in the test: the
tokenizer on the training texts, ``BertModel`` loaded separately on the ids the model saw, the feature
extractor on the decoded waveforms.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")
pd = pytest.importorskip("pandas")
pytest.importorskip("tokenizers")

import mtmm_core  # noqa: E402
from mtmm_core.databuild import RowsDataset, run_preprocessing  # noqa: E402
from mtmm_core.errors import UsageError  # noqa: E402
from mtmm_core.userdata import FolderDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue"]
WORDS = [*COLOURS, "the", "a", "big", "small", "box", "cup", "is", "very", "old", "new"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def doc_blocks() -> tuple[dict, dict]:
    """The schema and the config of docs/tables.md's section "A text column through a local BERT"."""
    text = (ROOT / "docs" / "tables.md").read_text()
    section = text.split("## A text column through a local BERT", 1)[1].split("\n## ", 1)[0]
    schema, config = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S))
    return schema, config


def save_tokenizer(folder: Path, vocab: list[str]) -> None:
    """A word-piece BERT tokenizer over ``vocab`` (a vocab.txt read by transformers), saved in ``folder``."""
    words = folder.parent / f"{folder.name}-vocab"
    words.mkdir(parents=True, exist_ok=True)
    (words / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(words))  # a folder with vocab.txt alone
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(folder)


def save_bert(folder: Path) -> Path:
    """A word-piece tokenizer over ``VOCAB`` and a 2-layer BERT (hidden 32), saved in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(folder, VOCAB)
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                     vocab_size=len(VOCAB), max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def review_rows(count: int, seed: int) -> pd.DataFrame:
    """Reviews whose colour word decides ``colour`` (3 classes); ``size`` a number; ``price`` a second target.
    Row 5 has no review; some reviews hold a word the vocabulary lacks (its [UNK])."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        colour = COLOURS[i % 3]
        words = [*rng.choice(WORDS[3:], size=1 + i % 6), colour, *rng.choice(WORDS[3:], size=i % 4)]
        if i % 9 == 4:
            words.insert(1, "purple")  # not in the vocabulary
        size = float(rng.normal(10, 3))
        records.append({"review": "" if i == 5 else " ".join(words).capitalize(), "size": size, "colour": colour,
                        "price": 2.0 * size + (i % 3) + float(rng.normal(0, 0.1)),
                        "split": "train" if i % 5 < 3 else "validation" if i % 5 == 3 else "test"})
    return pd.DataFrame(records)


@pytest.fixture()
def built(tmp_path, monkeypatch):
    """In ``tmp_path``: the model folder of the docs' config, ``reviews.csv`` and its build ``reviews_data``."""
    monkeypatch.chdir(tmp_path)
    schema, config = doc_blocks()
    folder = save_bert(Path(config["model"]["encoders"]["review"]["path"]))
    assert schema["features"]["review"]["tokenizer"] == str(folder)
    frame = review_rows(60, seed=0)
    frame.to_csv("reviews.csv", index=False)
    mtmm_core.build_data("reviews.csv", schema, "reviews_data")
    return frame, schema, config, folder


def test_the_stored_ids_are_the_tokenizers_own(built):
    frame, schema, _, folder = built
    dataset = FolderDataset("reviews_data")
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    max_len = schema["features"]["review"]["max_len"]
    texts = frame["review"].fillna("").tolist()
    expected = [reference(text, truncation=True, max_length=max_len)["input_ids"] if text else [] for text in texts]
    assert max(map(len, expected)) == max_len  # the longest reviews are cut, [SEP] kept last
    assert all(ids[0] == reference.cls_token_id and ids[-1] == reference.sep_token_id for ids in expected if ids)
    assert any(reference.unk_token_id in ids for ids in expected)
    rows = np.arange(len(frame))
    batch = dataset.read(rows)
    ids, lengths = batch.inputs["review"], batch.lengths["review"]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.shape == (len(frame), max_len) and ids.dtype == torch.int64
    for row, want in enumerate(expected):
        assert ids[row, : len(want)].tolist() == want
        assert (ids[row, len(want):] == reference.pad_token_id).all()
    assert not batch.present["review"][5] and batch.present["review"].sum() == len(frame) - 1
    spec = yaml.safe_load(Path("reviews_data/dataset.yaml").read_text())
    assert spec["modalities"]["review"]["vocab_sizes"] == [len(VOCAB)]
    # the training rows' texts in the built folder, against the tokenizer called on the whole list at once
    train = dataset.splits["train"].indices
    texts_train = [texts[i] for i in train if texts[i]]
    padded = reference(texts_train, truncation=True, max_length=max_len, padding="max_length")
    got = dataset.read(np.asarray([i for i in train if texts[i]])).inputs["review"]
    assert got.tolist() == padded["input_ids"]


def test_train_with_the_hf_encoder_on_the_built_ids_and_predict_on_raw_rows(built, tmp_path, monkeypatch):
    frame, _, config, folder = built
    run = mtmm_core.train(config, data="reviews_data", out="run")
    encoder = run.model.encoders["review"]
    assert type(encoder).__name__ == "HFEncoder" and encoder.output == "pooled" and encoder.pooling == "cls"

    # what the model hands the encoder on a batch: the stored ids and their lengths
    dataset = FolderDataset("reviews_data")
    batch = dataset.read(np.arange(12))
    seen = {}
    handle = encoder.register_forward_pre_hook(lambda module, args: seen.setdefault("args", args))
    with torch.no_grad():
        run.model(batch.inputs, batch.lengths, batch.present)
    handle.remove()
    ids, lengths = seen["args"]
    assert torch.equal(ids, batch.inputs["review"]) and torch.equal(lengths, batch.lengths["review"])
    # ... through the frozen backbone: BertModel's own output on the same ids (the saved weights, loaded again)
    reference = transformers.BertModel.from_pretrained(str(folder)).eval()
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    present = lengths > 0
    with torch.no_grad():
        cls = encoder.features(ids, lengths).tokens[:, 0]
        want = reference(input_ids=ids[present], attention_mask=mask[present]).last_hidden_state[:, 0]
    torch.testing.assert_close(cls[present], want, rtol=1e-5, atol=1e-5)
    assert (cls[~present] == 0).all()

    # new raw rows (shuffled, no targets) predict as the same rows of the built folder
    on_folder = run.predict("reviews_data")
    order = np.argsort(on_folder["row"])
    new = frame.drop(columns=["colour", "price", "split"]).iloc[::-1].reset_index(drop=True)
    new.to_csv("new.csv", index=False)
    raw = mtmm_core.load_run("run").predict("new.csv")
    back = len(frame) - 1 - np.arange(len(frame))  # row i of new.csv is row back[i] of the table
    assert raw["row"].tolist() == list(range(len(frame)))
    for key in ("colour", "price"):
        np.testing.assert_allclose(raw[key], on_folder[key][order][back], rtol=1e-5, atol=1e-5)
    assert (raw["colour.label"] == raw["colour"].argmax(axis=1)).all()

    # the run records the tokenizer folder as an absolute path: raw rows tokenize the same from anywhere
    preprocessing = run_preprocessing(tmp_path / "run")
    assert preprocessing["features"]["review"]["tokenizer"] == str(folder.resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    got, want = RowsDataset(tmp_path / "new.csv", preprocessing).read(np.arange(len(frame))), dataset.read(back)
    assert torch.equal(got.inputs["review"], want.inputs["review"])
    assert torch.equal(got.lengths["review"], want.lengths["review"])
    # and the run's model.yaml names the BERT folder absolutely: the run loads and predicts from here too
    again = mtmm_core.load_run(tmp_path / "run").predict(str(tmp_path / "new.csv"))
    np.testing.assert_allclose(again["price"], raw["price"], rtol=1e-6, atol=1e-6)


def test_ids_past_the_models_positions_fail_naming_max_len(built):
    folder = built[3]
    from mtmm_plugins.encoders.hf_backbone import HFEncoder

    encoder = HFEncoder(path=str(folder), output="pooled", pooling="cls", dim=8).eval()
    ids = torch.randint(5, len(VOCAB), (2, 70))
    with pytest.raises(ValueError, match="at most 64 .*max_position_embeddings.*max_len: 64"):
        encoder(ids, torch.tensor([70, 10]))
    with torch.no_grad():  # padding past the positions is dropped: the same as the ids cut there
        torch.testing.assert_close(encoder(ids, torch.tensor([64, 10])).tokens,
                                   encoder(ids[:, :64], torch.tensor([64, 10])).tokens)


def test_a_tokenizer_folder_saved_again_or_elsewhere_is_read_again(tmp_path, monkeypatch):
    schema = {"features": {"review": {"kind": "text", "column": "review", "tokenizer": "tok"},
                           "size": {"kind": "number", "column": "size"}},
              "targets": {"colour": {"kind": "classification", "column": "colour"}}, "split": {"column": "split"}}
    first_ids = []
    for place, vocab in (("a", VOCAB), ("b", VOCAB[:5] + VOCAB[5:][::-1]), ("b", VOCAB[:5] + VOCAB[6:])):
        (tmp_path / place).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / place)
        save_tokenizer(Path("tok"), vocab)  # the same relative path; in b saved twice
        review_rows(10, seed=2).to_csv("r.csv", index=False)
        dataset = FolderDataset(mtmm_core.build_data("r.csv", schema, "out", force=True))
        first = dataset.read(np.array([0])).inputs["review"][0, 1].item()  # the first word's id after [CLS]
        word = review_rows(10, seed=2)["review"][0].split()[0].lower()
        assert first == (vocab.index(word) if word in vocab else 1)
        first_ids.append(first)
    assert len(set(first_ids)) == 3


def test_a_missing_tokenizer_folder_and_a_hub_name_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    review_rows(10, seed=1).to_csv("r.csv", index=False)
    schema = {"features": {"review": {"kind": "text", "column": "review", "tokenizer": "bert-base-uncased"}},
              "targets": {"colour": {"kind": "classification", "column": "colour"}}, "split": {"column": "split"}}
    with pytest.raises(UsageError, match="bert-base-uncased.*local folder"):
        mtmm_core.build_data("r.csv", schema, "out")
    Path("empty").mkdir()
    schema["features"]["review"]["tokenizer"] = "empty"
    with pytest.raises(UsageError, match="tokenizer.*empty"):
        mtmm_core.build_data("r.csv", schema, "out")


@pytest.fixture()
def clips(tmp_path, monkeypatch):
    """In ``tmp_path``: a tiny Wav2Vec2 and its feature extractor in ``w2v``, 12 WAV clips (one at 8 kHz),
    ``clips.csv`` and its build ``clips_data``; returns each clip's waveform at 16 kHz as the build decodes it."""
    soundfile = pytest.importorskip("soundfile")
    soxr = pytest.importorskip("soxr")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, conv_dim=(8, 8),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        vocab_size=10, mask_time_prob=0.0, feat_extract_norm="layer", do_stable_layer_norm=True)
    transformers.Wav2Vec2Model(config).save_pretrained("w2v")
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                          return_attention_mask=True).save_pretrained("w2v")
    rng = np.random.default_rng(0)
    Path("clips").mkdir()
    records, waves = [], []
    for i in range(12):
        rate = 8000 if i == 7 else 16000  # one clip resampled to the schema's rate
        wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(400 + 37 * i) / rate)
                + rng.normal(0, 0.05, 400 + 37 * i))
        soundfile.write(f"clips/{i}.wav", wave, rate, subtype="FLOAT")
        records.append({"clip": f"clips/{i}.wav", "y": i % 2,
                        "split": "train" if i < 8 else "validation" if i < 10 else "test"})
        decoded = soundfile.read(f"clips/{i}.wav", dtype="float64")[0]
        waves.append(soxr.resample(decoded, rate, 16000) if rate != 16000 else decoded)
    pd.DataFrame(records).to_csv("clips.csv", index=False)
    schema = {"features": {"clip": {"kind": "audio", "column": "clip", "feature_extractor": "w2v"}},
              "targets": {"y": {"kind": "binary", "column": "y"}}, "split": {"column": "split"}}
    mtmm_core.build_data("clips.csv", schema, "clips_data")
    return waves


def test_audio_through_a_feature_extractor_stores_its_own_values(clips):
    dataset = FolderDataset("clips_data")
    batch = dataset.read(np.arange(12))
    assert dataset.modalities["clip"]["shape"] == [None, 1]
    reference = transformers.AutoFeatureExtractor.from_pretrained("w2v")
    for i, wave in enumerate(clips):
        want = reference(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
        assert batch.lengths["clip"][i] == len(want) == len(wave)
        np.testing.assert_allclose(batch.inputs["clip"][i, : len(want), 0].numpy(), want, rtol=1e-5, atol=1e-6)
        assert abs(float(want.mean())) < 1e-3  # do_normalize: zero mean per clip, not the data set's statistics
    assert (batch.inputs["clip"][0, len(clips[0]):] == 0).all()


def test_train_the_hf_encoder_on_the_extractors_values(clips):
    config = {"model": {"dim": 8, "encoders": {"clip": {"name": "hf", "path": "w2v", "output": "tokens"}}},
              "transfer": {"freeze": ["encoders.clip.backbone"]}, "train": {"epochs": 1, "batch_size": 4}}
    run = mtmm_core.train(config, data="clips_data", out="run")
    encoder = run.model.encoders["clip"]
    batch = FolderDataset("clips_data").read(np.arange(12))
    with torch.no_grad():
        tokens, mask = encoder.features(batch.inputs["clip"], batch.lengths["clip"])
    reference = transformers.Wav2Vec2Model.from_pretrained("w2v").eval()
    for i, length in enumerate(batch.lengths["clip"].tolist()):  # each clip alone, unpadded
        with torch.no_grad():
            want = reference(input_values=batch.inputs["clip"][i:i + 1, :length, 0]).last_hidden_state[0]
        assert int(mask[i].sum()) == len(want)
        torch.testing.assert_close(tokens[i, : len(want)], want, rtol=1e-4, atol=1e-4)
