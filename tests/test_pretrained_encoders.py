"""The pretrained-backbone encoders ``timm`` and ``hf`` (docs/pretrained.md), layer-wise learning rates
(``transfer.layer_decay``) and the tokenizer / feature-extractor helpers of ``mtmm_core.pretrained``.

Nothing is downloaded: each test builds a small randomly initialised model with the library's own
config classes, saves it to a temporary folder and loads it back through the encoder's real loading
code; the reference is the library's own model, loaded separately, on the same input. The tests of an
extra skip when it is absent (timm needs a torchvision build matching torch; see docs/pretrained.md).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mtmm_core
from mtmm_core import build_model, plugins
from mtmm_core.errors import SpecError, UsageError
from mtmm_core.pretrained import extra_available, load_feature_extractor, load_tokenizer
from mtmm_core.transfer import freeze, parameter_groups, transfer_settings

ROOT = Path(__file__).resolve().parents[1]
HAS_HF = extra_available("transformers")
HAS_TIMM = extra_available("timm")
needs_hf = pytest.mark.skipif(not HAS_HF, reason="the hf extra (transformers) is not installed")
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="the timm extra is not installed (or its torchvision cannot load)")
WORDS = "the cat sat on a mat dog ran far away".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS]
TINY_VIT = {"depth": 2, "patch_size": 8, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- saved models ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) and a word-level tokenizer, saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=48, max_position_embeddings=32, pad_token_id=0)
    transformers.BertModel(config).save_pretrained(folder)
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                         cls_token="[CLS]", sep_token="[SEP]").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wav2vec_dir(tmp_path_factory) -> Path:
    """A tiny Wav2Vec2 (two conv layers, stride 10 in all) and its feature extractor."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("wav2vec2")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, conv_dim=(8, 8),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        vocab_size=10, mask_time_prob=0.0, feat_extract_norm="layer", do_stable_layer_norm=True)
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                          return_attention_mask=True).save_pretrained(folder)
    return folder


def padded_ids(lengths: list[int], seed: int = 0, garbage: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids ``[B, max(lengths)]``: [CLS] words [SEP] in the first ``lengths[b]`` positions; padding after them
    (the pad id, or random word ids with ``garbage``)."""
    generator = torch.Generator().manual_seed(seed)
    steps = max(lengths)
    ids = torch.randint(4, len(VOCAB), (len(lengths), steps), generator=generator)
    ids[:, 0] = 2
    filler = torch.randint(4, len(VOCAB), ids.shape) if garbage else torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        if length:
            ids[row, length - 1] = 3
        ids[row, length:] = filler[row, length:]
    return ids, torch.tensor(lengths)


# -- hf: the library's own output, loading, masks -------------------------------------------------------
@needs_hf
def test_hf_pooled_and_tokens_equal_the_library_model_on_the_same_input(bert_dir):
    import transformers

    from mtmm_plugins.encoders import HFEncoder

    reference = transformers.BertModel.from_pretrained(bert_dir).eval()
    ids, lengths = padded_ids([7, 4, 9, 2])
    attention = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=attention)
        pooler = HFEncoder(path=str(bert_dir), output="pooled", pooling="pooler", dim=8).eval()
        tokens = HFEncoder(path=str(bert_dir), output="tokens", dim=8).eval()
        cls = HFEncoder(path=str(bert_dir), output="pooled", pooling="cls", dim=8).eval()
        pooled, pooled_mask = pooler.features(ids, lengths)
        hidden, mask = tokens.features(ids, lengths)
        first, _ = cls.features(ids, lengths)
        projected, projected_mask = tokens(ids, lengths)
    assert pooled.shape == (4, 1, 32) and pooled_mask.tolist() == [[True]] * 4
    torch.testing.assert_close(pooled[:, 0], expected.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(first[:, 0], expected.last_hidden_state[:, 0], rtol=0, atol=1e-6)
    assert hidden.shape == (4, 9, 32) and torch.equal(mask, attention.bool())
    torch.testing.assert_close(hidden[mask], expected.last_hidden_state[attention.bool()], rtol=0, atol=1e-6)
    assert torch.equal(hidden[~mask], torch.zeros_like(hidden[~mask]))
    assert projected.shape == (4, 9, 8) and torch.equal(projected_mask, mask) and tokens.out_dim == 8
    assert torch.equal(projected[~mask], torch.zeros_like(projected[~mask]))


@needs_hf
def test_hf_weights_are_those_saved_not_a_fresh_initialisation(bert_dir):
    import transformers
    from safetensors.torch import load_file

    from mtmm_plugins.encoders import HFEncoder

    saved = load_file(str(bert_dir / "model.safetensors"))
    backbone = HFEncoder(path=str(bert_dir)).backbone.state_dict()
    checked = [name for name in saved if name in backbone]
    assert len(checked) >= 30
    for name in checked:
        assert torch.equal(backbone[name], saved[name]), name
    fresh = transformers.BertModel(transformers.BertConfig.from_pretrained(bert_dir)).state_dict()
    assert not torch.equal(fresh["encoder.layer.0.attention.self.query.weight"],
                           backbone["encoder.layer.0.attention.self.query.weight"])


@needs_hf
def test_hf_padding_and_absent_samples_never_reach_a_valid_token(bert_dir):
    from mtmm_plugins.encoders import HFEncoder

    encoder = HFEncoder(path=str(bert_dir), output="tokens", dim=8).eval()
    clean, lengths = padded_ids([6, 0, 3, 8])
    garbage, _ = padded_ids([6, 0, 3, 8], garbage=True)
    assert not torch.equal(clean, garbage)
    with torch.no_grad():
        first, first_mask = encoder(clean, lengths)
        second, second_mask = encoder(garbage, lengths)
        pooled, pooled_mask = HFEncoder(path=str(bert_dir), output="pooled", dim=8).eval()(garbage, lengths)
    assert torch.equal(first, second) and torch.equal(first_mask, second_mask)
    assert not first_mask[1].any() and torch.isfinite(first).all()
    assert pooled_mask[:, 0].tolist() == [True, False, True, True] and torch.equal(pooled[1], torch.zeros(1, 8))


@needs_hf
def test_hf_strings_a_mapping_and_ids_give_the_same_tokens(bert_dir):
    from mtmm_plugins.encoders import HFEncoder

    encoder = HFEncoder(path=str(bert_dir), output="tokens", dim=8).eval()
    texts = ["the cat sat on a mat", "dog ran", "a zebra"]
    tokenize = load_tokenizer(bert_dir, max_len=16)
    encoded = tokenize(texts)
    assert encoded["input_ids"].dtype == np.int64 and encoded["input_ids"].shape == (3, 8)
    assert encoded["input_ids"][1].tolist() == [2, 10, 11, 3, 0, 0, 0, 0]  # [CLS] dog ran [SEP], then padding
    assert encoded["input_ids"][2, 2] == 1  # "zebra" is not in the vocabulary: [UNK]
    assert encoded["attention_mask"].sum(axis=1).tolist() == [8, 4, 4]
    ids = torch.from_numpy(encoded["input_ids"])
    with torch.no_grad():
        from_strings = encoder(texts)
        from_mapping = encoder({"input_ids": ids, "attention_mask": torch.from_numpy(encoded["attention_mask"])})
        from_ids = encoder(ids, torch.from_numpy(encoded["attention_mask"].sum(axis=1)))
    for other in (from_mapping, from_ids):
        assert torch.equal(from_strings.tokens, other.tokens) and torch.equal(from_strings.mask, other.mask)


@needs_hf
def test_load_tokenizer_cuts_at_max_len_and_pads_to_it_when_asked(bert_dir):
    cut = load_tokenizer(bert_dir, max_len=4)(["the cat sat on a mat"])
    assert cut["input_ids"].tolist() == [[2, 4, 5, 3]]
    padded = load_tokenizer(bert_dir, max_len=10, pad_to_max=True)(["dog"])
    assert padded["input_ids"].shape == (1, 10) and padded["attention_mask"].tolist() == [[1, 1, 1] + [0] * 7]
    with pytest.raises(UsageError, match="not a local folder"):
        load_tokenizer("bert-base-uncased")
    with pytest.raises(ValueError, match="max_len"):
        load_tokenizer(bert_dir, max_len=0)


@needs_hf
def test_hf_audio_frames_and_their_mask_match_the_library_model(wav2vec_dir):
    import transformers

    from mtmm_plugins.encoders import HFEncoder

    reference = transformers.Wav2Vec2Model.from_pretrained(wav2vec_dir).eval()
    encoder = HFEncoder(path=str(wav2vec_dir), output="tokens", dim=8).eval()
    torch.manual_seed(1)
    waves, lengths = torch.randn(3, 800), torch.tensor([800, 430, 0])
    valid = torch.arange(800)[None, :] < lengths[:, None]
    nan_padded = torch.where(valid, waves, float("nan"))
    with torch.no_grad():
        hidden, mask = encoder.features(nan_padded[..., None], lengths)  # [B, T, 1] as a table build gives
        frames = reference._get_feat_extract_output_lengths(lengths[:2])
        expected = reference(torch.where(valid, waves, 0.0)[:2], attention_mask=valid[:2].long()).last_hidden_state
        pooled, _ = HFEncoder(path=str(wav2vec_dir), output="pooled", dim=8).eval()(nan_padded, lengths)
    assert mask.sum(dim=1).tolist() == [*frames.tolist(), 0]
    assert torch.isfinite(hidden).all() and torch.isfinite(pooled).all()
    for row in range(2):
        torch.testing.assert_close(hidden[row, : frames[row]], expected[row, : frames[row]], rtol=0, atol=1e-6)
    extract = load_feature_extractor(wav2vec_dir)
    out = extract([np.ones(100), np.zeros(60)])
    assert out["input_values"].shape == (2, 100) and out["input_values"].dtype == np.float32
    assert out["attention_mask"].sum(axis=1).tolist() == [100, 60]


@needs_hf
def test_hf_passes_every_contract_check():
    from mtmm_core.testing import check_component

    report = check_component("encoder", "hf")
    assert report.passed and not report.skipped, str(report)


# -- timm -----------------------------------------------------------------------------------------------
def save_timm(folder: Path, name: str, num_classes: int = 5, **kwargs) -> tuple[Path, dict]:
    """A randomly initialised timm model with a classifier, saved as safetensors; returns (file, state)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    path = folder / f"{name}.safetensors"
    save_file(state, str(path))
    return path, state


@needs_timm
def test_timm_pooled_output_equals_the_library_model_and_loads_the_file(tmp_path):
    import timm

    from mtmm_plugins.encoders import TimmEncoder

    path, state = save_timm(tmp_path, "vit_tiny_patch16_224", img_size=32, **TINY_VIT)
    encoder = TimmEncoder(model_name="vit_tiny_patch16_224", pretrained=str(path), image_size=32,
                          model_kwargs=TINY_VIT, dim=8).eval()
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, **TINY_VIT)
    reference.load_state_dict(state)
    reference.reset_classifier(0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        pooled, mask = encoder.features(images)
        expected = reference.eval()(images)
        tokens, token_mask = TimmEncoder(model_name="vit_tiny_patch16_224", pretrained=str(path), image_size=32,
                                         model_kwargs=TINY_VIT, output="tokens", dim=8).eval()(images)
    torch.testing.assert_close(pooled[:, 0], expected, rtol=0, atol=1e-6)
    assert mask.all() and pooled.shape == (3, 1, 32)
    assert tokens.shape == (3, 1 + 16, 8) and token_mask.shape == (3, 17)  # CLS + (32 / 8)**2 patches
    backbone = encoder.backbone.state_dict()
    assert all(torch.equal(backbone[name], state[name]) for name in backbone)
    assert "head.weight" in state and "head.weight" not in backbone  # the classifier is dropped


@needs_timm
def test_timm_cnn_tokens_adapted_channels_and_absent_images(tmp_path):
    from mtmm_plugins.encoders import TimmEncoder

    path, state = save_timm(tmp_path, "resnet18", layers=(1, 1, 1, 1))
    encoder = TimmEncoder(model_name="resnet18", pretrained=str(path), in_channels=1, image_size=64,
                          model_kwargs={"layers": (1, 1, 1, 1)}, output="tokens", dim=8).eval()
    # timm's loader sums the RGB filters of the first convolution for one channel
    torch.testing.assert_close(encoder.backbone.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    images = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        tokens, mask = encoder(images, torch.tensor([1, 0]))
        again, _ = encoder(torch.where(torch.tensor([True, False])[:, None, None, None], images, float("nan")),
                           torch.tensor([1, 0]))
    assert tokens.shape == (2, 2 * 2, 8)  # a 2x2 final feature map of a 64x64 image
    assert mask.tolist() == [[True] * 4, [False] * 4] and torch.equal(tokens, again)


@needs_timm
def test_timm_refuses_a_file_of_another_model_and_an_unknown_name(tmp_path):
    from mtmm_plugins.encoders import TimmEncoder

    path, _ = save_timm(tmp_path, "resnet18", layers=(1, 1, 1, 1))
    with pytest.raises(Exception, match="size mismatch|lacks"):
        TimmEncoder(model_name="vit_tiny_patch16_224", pretrained=str(path), image_size=32, model_kwargs=TINY_VIT)
    with pytest.raises(ValueError, match="resnet18"):
        TimmEncoder(model_name="resnet81")


@needs_timm
def test_timm_pretrained_true_reads_the_local_hub_cache_and_never_downloads(tmp_path, monkeypatch):
    import huggingface_hub

    from mtmm_plugins.encoders import TimmEncoder

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    kwargs = {"model_name": "resnet18", "pretrained": True, "model_kwargs": {"layers": (1, 1, 1, 1)}}
    with pytest.raises(UsageError, match="not in the local Hugging Face cache.*huggingface-cli download timm/resnet18"):
        TimmEncoder(**kwargs)
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"  # the cache's layout, as huggingface-cli leaves it
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    _, state = save_timm(repo / "snapshots" / "0123abc", "resnet18", layers=(1, 1, 1, 1))
    (repo / "snapshots" / "0123abc" / "resnet18.safetensors").rename(repo / "snapshots" / "0123abc" / "model.safetensors")
    backbone = TimmEncoder(**kwargs).backbone.state_dict()
    assert all(torch.equal(backbone[name], state[name]) for name in backbone)


@needs_timm
def test_timm_layer_depths_follow_timms_grouping():
    from mtmm_plugins.encoders import TimmEncoder

    encoder = TimmEncoder(model_name="vit_tiny_patch16_224", image_size=32, model_kwargs=TINY_VIT)
    depths = encoder.layer_depths()
    assert depths["backbone.cls_token"] == depths["backbone.patch_embed.proj.weight"] == 0
    assert depths["backbone.blocks.0.attn.qkv.weight"] == 1 and depths["backbone.blocks.1.mlp.fc1.weight"] == 2
    assert depths["backbone.norm.weight"] == max(depths.values())  # the final norm: in the top group
    assert set(depths) == {f"backbone.{name}" for name, _ in encoder.backbone.named_parameters()}


# -- transfer: freezing and layer-wise learning rates ---------------------------------------------------
def hf_model(bert_dir: Path, **encoder: object) -> torch.nn.Module:
    return build_model({"dim": 8, "encoders": {"text": {"name": "hf", "path": str(bert_dir), **encoder}},
                        "fusion": {"name": "concat"}, "tasks": {"label": {"head": "classification", "num_classes": 2}}})


@needs_hf
def test_layer_decay_scales_each_layers_learning_rate(bert_dir):
    model = hf_model(bert_dir, output="pooled")
    groups = parameter_groups(model, transfer_settings({"layer_decay": 0.5}), lr=1e-3)
    lr_by_id = {id(parameter): group["lr"] for group in groups for parameter in group["params"]}
    lr_of = {name: lr_by_id[id(parameter)] for name, parameter in model.named_parameters()}
    assert sum(len(group["params"]) for group in groups) == len(lr_by_id) == len(lr_of)  # each in exactly one group
    assert groups[0]["lr"] == 1e-3  # the new layers first: their rate is the one the trainer logs
    assert lr_of["encoders.text.projection.weight"] == lr_of["heads.label.mlp.1.weight"] == 1e-3
    prefix = "encoders.text.backbone."
    assert lr_of[prefix + "pooler.dense.weight"] == 1e-3 * 0.5
    assert lr_of[prefix + "encoder.layer.1.output.dense.weight"] == 1e-3 * 0.25
    assert lr_of[prefix + "encoder.layer.0.output.dense.weight"] == 1e-3 * 0.125
    assert lr_of[prefix + "embeddings.word_embeddings.weight"] == 1e-3 * 0.0625
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert scheduler.get_last_lr() == pytest.approx([1e-3 * group["lr_scale"] * 0.5 for group in groups])
    plain = parameter_groups(model, transfer_settings({}), lr=1e-3)
    assert len(plain) == 1 and len(plain[0]["params"]) == len(list(model.parameters()))


def test_layer_decay_is_checked_and_needs_a_module_that_reports_layers():
    for bad in (0, 1.5, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(SpecError, match="transfer.layer_decay"):
            transfer_settings({"layer_decay": bad})
    model = build_model({"dim": 8, "encoders": {"x": {"name": "tabular", "num_numeric": 2}}, "fusion": "concat",
                         "tasks": {"y": {"head": "regression"}}})
    with pytest.raises(SpecError, match="reports its layers"):
        parameter_groups(model, transfer_settings({"layer_decay": 0.8}), lr=1e-3)


@needs_hf
def test_freezing_the_backbone_through_transfer_leaves_it_unchanged_by_a_step(bert_dir):
    model = hf_model(bert_dir, output="pooled")
    frozen = freeze(model, ["encoders.text.backbone"])
    assert frozen and all(name.startswith("encoders.text.backbone.") for name, _ in frozen)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(parameter_groups(model, transfer_settings({"freeze": ["encoders.text.backbone"]}),
                                                   lr=1e-2))
    ids, lengths = padded_ids([5, 3, 7, 2])
    output = model({"text": ids}, {"text": lengths})
    total, _ = model.compute_loss(output, {"label": torch.tensor([0, 1, 1, 0])})
    total.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter)
        assert changed != name.startswith("encoders.text.backbone."), name


# -- a training run -------------------------------------------------------------------------------------
class ToySplit:
    """Word ids of a text (the label: whether it holds 'dog') and, with images, a bright or dark image."""

    def __init__(self, rows: int, seed: int, images: bool):
        generator = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(3, 9, (rows,), generator=generator)
        self.ids, _ = padded_ids(self.lengths.tolist(), seed=seed)
        self.labels = (self.ids == VOCAB.index("dog")).any(dim=1).long()
        self.images = (torch.randn(rows, 3, 32, 32, generator=generator) + self.labels[:, None, None, None]
                       if images else None)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows):
        rows = torch.as_tensor(rows)
        inputs, lengths = {"text": self.ids[rows]}, {"text": self.lengths[rows]}
        if self.images is not None:
            inputs["image"] = self.images[rows]
        return mtmm_core.Batch(inputs, lengths, {"label": self.labels[rows]})


class ToyData:
    def __init__(self, *, images: bool = False):
        self.modalities = {"text": {"kind": "sequence", "shape": [None], "dtype": "int64", "vocab_sizes": [len(VOCAB)]}}
        if images:
            self.modalities["image"] = {"kind": "image", "shape": [3, 32, 32]}
        self.tasks = {"label": {"kind": "classification", "num_classes": 2}}
        self.splits = {name: ToySplit(rows, seed, images)
                       for name, rows, seed in (("train", 48, 0), ("validation", 16, 1), ("test", 16, 2))}


class ToyDataPlugin:
    @mtmm_core.hookimpl
    def register_datasets(self, register):
        register("pretrained_toy", ToyData)


@needs_hf
@pytest.mark.parametrize("with_timm", [False, pytest.param(True, marks=needs_timm)], ids=["hf", "hf+timm"])
def test_one_epoch_of_training_with_pretrained_encoders(bert_dir, tmp_path, with_timm):
    from mtmm_core.config import load_config
    from mtmm_core.trainer import Trainer

    encoders = {"text": {"name": "hf", "path": str(bert_dir), "output": "tokens"}}
    if with_timm:
        path, _ = save_timm(tmp_path, "vit_tiny_patch16_224", img_size=32, **TINY_VIT)
        encoders["image"] = {"name": "timm", "model_name": "vit_tiny_patch16_224", "pretrained": str(path),
                             "model_kwargs": TINY_VIT, "output": "tokens"}
    config = load_config(None, ["train.epochs=1", "train.batch_size=16", "train.progress=false"])
    config["data"] = {"name": "pretrained_toy", "images": with_timm}
    config["model"] = {"dim": 16, "encoders": encoders, "fusion": {"name": "cross_attention", "heads": 2},
                       "tasks": {"label": {"head": "classification", "num_classes": 2}}}
    config["transfer"] = {"layer_decay": 0.7}
    name = plugins.register_plugin(ToyDataPlugin(), name="test-pretrained-toy")
    try:
        trainer = Trainer(config, tmp_path / "run")
        before = trainer.model.encoders["text"].backbone.embeddings.word_embeddings.weight.detach().clone()
        metrics = trainer.run()
    finally:
        plugins.unregister_plugin(name)
    assert any(key.startswith("label.") for key in metrics), metrics
    assert (tmp_path / "run" / "last.pt").is_file()
    after = trainer.model.encoders["text"].backbone.embeddings.word_embeddings.weight
    assert not torch.equal(before, after)  # the backbone trained (at its decayed rate)
    # the trainer's optimiser has the layer-wise groups: the full rate first, then lr * 0.7 ** k
    scales = sorted({round(group["lr_scale"], 12) for group in trainer.optimizer.param_groups}, reverse=True)
    assert len(trainer.optimizer.param_groups) > 1 and scales[0] == 1.0
    assert all(any(abs(s - 0.7 ** k) < 1e-12 for k in range(1, 8)) for s in scales[1:]), scales
    for group in trainer.optimizer.param_groups:  # the schedule starts each group at its own rate
        assert group["initial_lr"] == pytest.approx(trainer.settings.lr * group["lr_scale"], rel=1e-12)
    if with_timm:
        assert trainer.model.encoders["image"].image_size == 32  # filled in from the data's square images


# -- without the extras ---------------------------------------------------------------------------------
def test_both_encoders_are_listed_without_their_extras():
    names = {c.name: c for c in mtmm_core.list_components("encoder")}
    assert names["timm"].metadata["requires"] == "timm" and names["hf"].metadata["requires"] == "transformers"


@pytest.mark.parametrize(("module", "entry", "extra"), [
    ("transformers", {"name": "hf", "config": {"model_type": "bert"}}, "hf"),
    ("timm", {"name": "timm", "model_name": "resnet18"}, "timm"),
])
def test_a_missing_extra_names_the_pip_command(monkeypatch, module, entry, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed: importing it fails
    with pytest.raises(SpecError) as error:
        build_model({"encoders": {"x": entry}, "fusion": "concat", "tasks": {"y": {"head": "regression"}}})
    assert f'pip install "mtmm[{extra}]"' in str(error.value) and "encoders.x" in str(error.value)


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "hf", "path": "x", "output": "both"}, "output"),
    ({"name": "hf", "path": "x", "pooling": "max"}, "pooling"),
    ({"name": "hf"}, "exactly one of path"),
    ({"name": "hf", "path": "no/such/folder"}, "not a local folder"),
    ({"name": "hf", "path": "x", "max_len": 0}, "max_len"),
    ({"name": "timm", "model_name": "resnet18", "output": "all"}, "output"),
    ({"name": "timm", "model_name": "resnet18", "pretrained": "no/such/file.safetensors"}, "no weights file"),
    ({"name": "timm", "model_name": "resnet18", "in_channels": 0}, "in_channels"),
])
def test_bad_parameters_are_refused_by_name_before_any_import(entry, message):
    with pytest.raises(SpecError, match=message):
        build_model({"encoders": {"x": entry}, "fusion": "concat", "tasks": {"y": {"head": "regression"}}})


def test_the_documented_config_names_only_real_parameters(tmp_path):
    from mtmm_core.components import check_arguments, get_component

    text = (ROOT / "docs" / "pretrained.md").read_text()
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    models = [block["model"] for block in blocks if isinstance(block, dict) and "model" in block]
    assert models, "docs/pretrained.md has no model: example"
    seen = set()
    for model in models:
        for modality, entry in model["encoders"].items():
            params = {k: v for k, v in entry.items() if k != "name"}
            check_arguments(get_component("encoder", entry["name"]), params, f"encoders.{modality}")
            seen.add(entry["name"])
    assert {"timm", "hf"} <= seen
    transfer = [block["transfer"] for block in blocks if isinstance(block, dict) and "transfer" in block]
    assert transfer and all(transfer_settings(section).layer_decay for section in transfer)
