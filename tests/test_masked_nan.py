"""Padding and absent modalities never influence a prediction, whatever they hold (NaN, inf).

The README promises that absent samples never influence the result. Every encoder
and fusion therefore replaces padded frames and absent modalities with
``torch.where`` before any arithmetic ("masks replace, never multiply"). The
property tested here: writing NaN, +inf or -inf into every padded position and
every absent modality's input leaves every prediction finite and bit-identical
(``torch.equal``) to the run with zeros there, for every sample; and a backward
pass with NaN there leaves every parameter gradient finite (and equal to the
zero-filled one).

The encoders, fusions and architectures are enumerated from the registry: a new
fusion or architecture is covered as it is; a new encoder needs an entry in
``ENCODERS`` (a test says so). One model holds every encoder, one modality each,
so each fusion x architecture model exercises every encoder. Inputs are fresh
random tensors on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

import mtmm_core
from mtmm_core import build_model
from mtmm_plugins.layers import AttentionKeys, TransformerBlock

DIM = 16
BATCH = 8
STEPS = 12  # frames / bytes of the sequence modalities (the longest sample has them all)
VOCAB = 257  # ByteTokenizer.VOCAB_SIZE
FILLS = (float("nan"), float("inf"), float("-inf"))
# Small widths for speed; a parameter is passed only to the components that accept it.
SMALL_PARAMS = {"hidden": 16, "expert_hidden": 16, "hidden_dim": 16, "factor_dim": 3, "rank": 2, "num_latents": 4}
TASKS = {
    "label": {"head": "classification", "num_classes": 3},
    "flag": {"head": "binary"},
    "value": {"head": "regression"},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: with one intra-op thread the module takes ~10 s, with two it takes
    minutes as soon as other processes compete for the cores (the threads wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class EncoderCase:
    """One encoder under test: its spec, a clean input ``make(batch) -> (x, lengths or None)``, and
    ``fill(x, keep, value) -> x`` writing ``value`` wherever ``keep`` (bool ``[B]`` or ``[B, T]``) is False."""

    spec: dict
    make: Callable[[int], tuple[Any, torch.Tensor | None]]
    fill: Callable[[Any, torch.Tensor, float], Any]
    sequence: bool  # True: lengths mark the valid frames; False: no sequence axis


def _keep(keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return keep.reshape(*keep.shape, *[1] * (x.dim() - keep.dim()))


def fill_float(x: torch.Tensor, keep: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(_keep(keep, x), x, value)


def fill_ids(x: torch.Tensor, keep: torch.Tensor, value: float, high: int) -> torch.Tensor:
    """Integer inputs cannot hold NaN: 0 for the zero-filled run, random valid ids otherwise."""
    garbage = torch.zeros_like(x) if value == 0 else torch.randint_like(x, high)
    return torch.where(_keep(keep, x), x, garbage)


def sequence_lengths(batch: int) -> torch.Tensor:
    """Lengths in [0, STEPS]: mostly short (padding to fill), one full, one 0 (present but empty)."""
    lengths = torch.randint(1, STEPS, (batch,))
    lengths[-1], lengths[-2] = STEPS, 0
    return lengths[torch.randperm(batch)]


def table(batch: int) -> dict[str, torch.Tensor]:
    categorical = torch.stack([torch.randint(3, (batch,)), torch.randint(4, (batch,))], dim=1)
    return {"numeric": torch.randn(batch, 3), "categorical": categorical}


def fill_table(x: dict[str, torch.Tensor], keep: torch.Tensor, value: float) -> dict[str, torch.Tensor]:
    garbage = torch.stack([torch.randint(3, (keep.shape[0],)), torch.randint(4, (keep.shape[0],))], dim=1)
    categorical = torch.where(keep[:, None], x["categorical"], 0 if value == 0 else garbage)
    return {"numeric": fill_float(x["numeric"], keep, value), "categorical": categorical}


ENCODERS = {
    "cnn": EncoderCase({"name": "cnn", "channels": [4, 8]}, lambda b: (torch.randn(b, 1, 8, 8), None),
                       fill_float, sequence=False),
    "patch_transformer": EncoderCase(
        {"name": "patch_transformer", "image_size": 8, "patch_size": 4, "in_channels": 2, "depth": 1},
        lambda b: (torch.randn(b, 2, 8, 8), None), fill_float, sequence=False),
    "sequence_transformer": EncoderCase(
        {"name": "sequence_transformer", "in_features": 5, "depth": 1, "max_len": STEPS},
        lambda b: (torch.randn(b, STEPS, 5), sequence_lengths(b)), fill_float, sequence=True),
    "text": EncoderCase(
        {"name": "text", "depth": 1, "max_len": STEPS},
        lambda b: (torch.randint(1, VOCAB, (b, STEPS)), sequence_lengths(b)),
        lambda x, keep, value: fill_ids(x, keep, value, VOCAB), sequence=True),
    "tabular": EncoderCase({"name": "tabular", "num_numeric": 3, "categories": [3, 4], "hidden": 16},
                           lambda b: (table(b), None), fill_table, sequence=False),
}
MODALITIES = sorted(ENCODERS)  # one modality per encoder, named after it
FUSIONS = sorted(c.name for c in mtmm_core.list_components("fusion"))
ARCHITECTURES = sorted(c.name for c in mtmm_core.list_components("architecture"))


def small(kind: str, name: str) -> dict:
    accepted = {p["name"] for p in mtmm_core.describe(kind, name)["parameters"]}
    return {"name": name, **{k: v for k, v in SMALL_PARAMS.items() if k in accepted}}


def build(fusion: str, architecture: str, tasks: dict | None = None) -> torch.nn.Module:
    return build_model({
        "dim": DIM,
        "encoders": {m: ENCODERS[m].spec for m in MODALITIES},
        "fusion": small("fusion", fusion),
        "architecture": small("architecture", architecture),
        "tasks": tasks or TASKS,
    })


@dataclass
class Batch:
    inputs: dict[str, Any]
    lengths: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]

    def filled(self, value: float, padding: bool = True, absent: bool = True) -> dict[str, Any]:
        """The inputs with ``value`` at the padded positions (``padding``) and in the absent samples (``absent``)."""
        out = {}
        for m, x in self.inputs.items():
            keep = torch.ones((BATCH, STEPS) if m in self.lengths else (BATCH,), dtype=torch.bool)
            if padding and m in self.lengths:
                keep = keep & (torch.arange(STEPS)[None, :] < self.lengths[m][:, None])
            if absent:
                keep = keep & _keep(self.present[m], keep)
            out[m] = ENCODERS[m].fill(x, keep, value)
        return out


def make_batch(modalities: list[str] = MODALITIES) -> Batch:
    """Sample ``i < len(modalities)`` has only modality ``i`` (so every modality is absent somewhere),
    the others a random non-empty subset. A present sequence may have length 0."""
    present = torch.rand(BATCH, len(modalities)) < 0.5
    only = torch.arange(len(modalities))
    present[only] = only[:, None] == only[None, :]
    empty = ~present.any(dim=1)
    present[empty, torch.randint(len(modalities), (int(empty.sum()),))] = True
    inputs, lengths, presence = {}, {}, {}
    for i, m in enumerate(modalities):
        inputs[m], length = ENCODERS[m].make(BATCH)
        presence[m] = present[:, i]
        if length is not None:
            lengths[m] = length
    return Batch(inputs, lengths, presence)


def predictions_are_identical(first, second) -> None:
    assert set(first.predictions) == set(second.predictions)
    for task, reference in first.predictions.items():
        assert torch.isfinite(reference).all(), task
        assert torch.equal(reference, second.predictions[task]), f"{task}: padding or absent content leaked"
    assert torch.equal(first.fused, second.fused)


def test_every_registered_encoder_has_a_case():
    # The pretrained backbones (an optional extra and a model folder each) have these checks in
    # tests/test_pretrained_encoders.py.
    registered = {c.name for c in mtmm_core.list_components("encoder") if not c.metadata.get("requires")}
    missing = sorted(registered - set(ENCODERS))
    assert not missing, f"add an EncoderCase for {missing} to tests/test_masked_nan.py"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_padding_and_absent_modalities_never_reach_a_prediction(fusion, architecture):
    model = build(fusion, architecture).eval()
    batch = make_batch()
    with torch.no_grad():
        reference = model(batch.filled(0.0), batch.lengths, batch.present)
        for value in FILLS:
            predictions_are_identical(reference, model(batch.filled(value), batch.lengths, batch.present))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_subset_of_the_modalities_with_nan_padding_and_absences(fusion):
    model = build(fusion, "hard_sharing").eval()
    batch = make_batch(["cnn", "sequence_transformer"])
    with torch.no_grad():
        reference = model(batch.filled(0.0), batch.lengths, batch.present)
        predictions_are_identical(reference, model(batch.filled(float("nan")), batch.lengths, batch.present))


def gradients(model: torch.nn.Module, batch: Batch, inputs: dict[str, Any], targets: dict) -> dict[str, torch.Tensor]:
    model.zero_grad()
    total, _ = model.compute_loss(model(inputs, batch.lengths, batch.present), targets)
    total.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def check_gradients(fusion: str, architecture: str, padding: bool, absent: bool) -> None:
    model = build(fusion, architecture).train()  # dropout is 0 and modality_dropout is off: deterministic
    batch = make_batch()
    targets = {"label": torch.randint(3, (BATCH,)), "flag": torch.rand(BATCH).round(), "value": torch.randn(BATCH)}
    reference = gradients(model, batch, batch.filled(0.0, padding, absent), targets)
    nan = gradients(model, batch, batch.filled(float("nan"), padding, absent), targets)
    assert reference.keys() == nan.keys() and reference
    for name, grad in nan.items():
        assert torch.isfinite(grad).all(), f"non-finite gradient of {name}"
        assert torch.equal(grad, reference[name]), f"gradient of {name} depends on masked content"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_nan_padding_leaves_every_gradient_finite(fusion, architecture):
    check_gradients(fusion, architecture, padding=True, absent=False)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_nan_in_absent_modalities_leaves_every_gradient_finite(fusion):
    check_gradients(fusion, "hard_sharing", padding=True, absent=True)


def test_contrastive_logits_ignore_padding_and_absent_modalities():
    tasks = {**TASKS, "align": {"head": "contrastive", "modalities": ["cnn", "sequence_transformer"]}}
    model = build("perceiver", "hard_sharing", tasks).eval()
    batch = make_batch()
    with torch.no_grad():
        reference = model(batch.filled(0.0), batch.lengths, batch.present)
        predictions_are_identical(reference, model(batch.filled(float("nan")), batch.lengths, batch.present))


def test_contrastive_logits_ignore_nan_padding():
    tasks = {**TASKS, "align": {"head": "contrastive", "modalities": ["text", "sequence_transformer"]}}
    model = build("perceiver", "hard_sharing", tasks).eval()
    batch = make_batch()
    with torch.no_grad():
        reference = model(batch.filled(0.0, absent=False), batch.lengths, batch.present)
        nan = model(batch.filled(float("nan"), absent=False), batch.lengths, batch.present)
    predictions_are_identical(reference, nan)


def test_a_sample_with_every_modality_absent_is_refused():
    """The contract: every sample needs at least one modality (there is nothing to predict from)."""
    model = build("perceiver", "hard_sharing").eval()
    batch = make_batch()
    for m in MODALITIES:
        batch.present[m][2] = False
    with pytest.raises(ValueError, match=r"samples \[2\] have no modality present"):
        model(batch.filled(float("nan")), batch.lengths, batch.present)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_ignores_nan_at_padded_positions_and_in_samples_of_length_0(name):
    """The encoder alone: a sequence's padded frames, or (no sequence axis) a sample whose length is 0."""
    case = ENCODERS[name]
    encoder = mtmm_core.create("encoder", name, dim=DIM, **{k: v for k, v in case.spec.items() if k != "name"})
    x, lengths = case.make(BATCH)
    if case.sequence:
        keep = torch.arange(STEPS)[None, :] < lengths[:, None]
    else:
        lengths = torch.randint(1, 3, (BATCH,))
        lengths[::3] = 0
        keep = lengths > 0
    reference = encoder(case.fill(x, keep, 0.0), lengths)
    for value in FILLS:
        out = encoder(case.fill(x, keep, value), lengths)
        assert torch.isfinite(out.tokens).all()
        assert torch.equal(out.tokens, reference.tokens) and torch.equal(out.mask, reference.mask)
    if case.sequence:  # tokens at padded frames are zeros
        assert not reference.tokens[~reference.mask].any()
    out.tokens.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("form", ["lengths", "mask"])
def test_masked_keys_holding_nan_contribute_exactly_nothing(form):
    """The attention itself: NaN/inf in masked keys (prefix lengths or scattered mask); a row with no valid key."""
    block = TransformerBlock(DIM, heads=4)
    x, context = torch.randn(4, 5, DIM), torch.randn(4, 7, DIM, requires_grad=True)
    if form == "lengths":
        lengths = torch.tensor([7, 3, 0, 1])
        valid = torch.arange(7)[None, :] < lengths[:, None]
        keys = AttentionKeys(lengths=lengths)
    else:
        valid = torch.rand(4, 7) < 0.6
        valid[:, 0], valid[2] = False, False  # not a prefix; row 2 has no valid key
        keys = AttentionKeys(mask=valid)
    reference = block(x, torch.where(valid[..., None], context, 0.0), keys)
    for value in FILLS:
        out = block(x, torch.where(valid[..., None], context, value), keys)
        assert torch.equal(out, reference)
    attended = x + block.attention.out.bias  # no valid key: the attention is 0 before its output layer
    assert torch.equal(reference[2], (attended + block.feed_forward(block.norm_ff(attended)))[2])
    out.sum().backward()
    assert torch.isfinite(context.grad).all() and not context.grad[~valid].any()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)
