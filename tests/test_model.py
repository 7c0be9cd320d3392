"""build_model: composition from names, spec errors with paths, missing modalities, losses."""

from __future__ import annotations

import copy

import pytest
import torch

import mtmm_core
from mtmm_core import SpecError, build_model
from mtmm_core.model import UnknownTaskWarning

DIM = 32


def image_audio_spec(fusion: str = "concat", **extra) -> dict:
    spec = {
        "dim": DIM,
        "encoders": {
            "image": {"name": "cnn"},
            "audio": {"name": "sequence_transformer", "in_features": 13, "depth": 1},
        },
        "fusion": {"name": fusion},
        "tasks": {
            "digit": {"head": "classification", "num_classes": 10},
            "match": {"head": "binary"},
            "sum": {"head": "regression", "loss": "huber"},
        },
        "weighting": {"name": "uncertainty"},
    }
    spec.update(extra)
    return spec


def image_audio_batch(batch: int = 6):
    lengths = torch.randint(1, 20, (batch,))
    inputs = {"image": torch.randn(batch, 1, 8, 8), "audio": torch.randn(batch, 20, 13)}
    targets = {
        "digit": torch.randint(0, 10, (batch,)),
        "match": torch.randint(0, 2, (batch,)).float(),
        "sum": torch.rand(batch) * 18,
    }
    return inputs, {"audio": lengths}, targets


FUSIONS = [c.name for c in mtmm_core.list_components("fusion")]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_composes_trains_and_survives_a_missing_modality(fusion):
    model = build_model(image_audio_spec(fusion))
    inputs, lengths, targets = image_audio_batch()
    present = {"audio": torch.tensor([True, False, True, False, True, True])}
    output = model(inputs, lengths, present)
    assert output.predictions["digit"].shape == (6, 10)
    assert output.predictions["match"].shape == (6,) and output.predictions["sum"].shape == (6,)
    total, per_task = model.compute_loss(output, targets)
    assert torch.isfinite(total) and set(per_task) == {"digit", "match", "sum"}
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert model.weighting.log_variances.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        first = model(inputs, lengths, present).fused
        garbage = dict(inputs, audio=inputs["audio"] * 1e3 + 7)
        second = model(garbage, lengths, present).fused
        image_only = model({"image": inputs["image"]}).fused
    absent = ~present["audio"]
    torch.testing.assert_close(first[absent], second[absent])
    assert not torch.allclose(first[~absent], second[~absent])
    assert torch.isfinite(image_only).all()


ENCODER_CASES = {
    "cnn": ({"name": "cnn"}, lambda b: torch.randn(b, 1, 8, 8), None),
    "patch_transformer": ({"name": "patch_transformer", "image_size": 8, "patch_size": 4, "depth": 1},
                          lambda b: torch.randn(b, 1, 8, 8), None),
    "sequence_transformer": ({"name": "sequence_transformer", "in_features": 5, "depth": 1},
                             lambda b: torch.randn(b, 9, 5), lambda b: torch.randint(0, 10, (b,))),
    "text": ({"name": "text", "depth": 1}, lambda b: [f"sample {i} " * (i + 1) for i in range(b)], None),
    "tabular": ({"name": "tabular", "num_numeric": 4, "categories": [3, 5]},
                lambda b: {"numeric": torch.randn(b, 4),
                           "categorical": torch.stack([torch.randint(0, 3, (b,)), torch.randint(0, 5, (b,))], 1)},
                None),
}


@pytest.mark.parametrize("encoder", sorted(ENCODER_CASES))
def test_every_encoder_composes_with_another_modality_missing_for_some_samples(encoder):
    entry, make_input, make_lengths = ENCODER_CASES[encoder]
    spec = {
        "dim": DIM,
        "encoders": {"subject": entry, "other": {"name": "cnn"}},
        "fusion": "gated",
        "tasks": {"label": {"head": "classification", "num_classes": 3}},
    }
    model = build_model(spec)
    batch = 4
    inputs = {"subject": make_input(batch), "other": torch.randn(batch, 1, 8, 8)}
    lengths = {"subject": make_lengths(batch)} if make_lengths else {}
    present = {"subject": torch.tensor([True, False, True, True]), "other": torch.tensor([False, True, True, False])}
    output = model(inputs, lengths, present)
    total, _ = model.compute_loss(output, {"label": torch.randint(0, 3, (batch,))})
    total.backward()
    encoder_grads = [p.grad for p in model.encoders["subject"].parameters() if p.grad is not None]
    assert encoder_grads and all(torch.isfinite(g).all() for g in encoder_grads)
    assert any(g.abs().sum() > 0 for g in encoder_grads)


def test_the_issue_example_spec_builds_and_loads_from_yaml(tmp_path):
    spec_file = tmp_path / "model.yaml"
    spec_file.write_text(
        "dim: 32\n"
        "encoders:\n  image: {name: cnn}\n  audio: {name: sequence_transformer, in_features: 13}\n"
        "fusion: {name: cross_attention}\n"
        "architecture: {name: mmoe, num_experts: 3}\n"
        "tasks:\n  digit: {head: classification, num_classes: 10}\n  sum: {head: regression}\n"
        "weighting: {name: uncertainty}\n"
    )
    model = build_model(spec_file)
    inputs, lengths, targets = image_audio_batch(3)
    output = model(inputs, lengths)
    total, per_task = model.compute_loss(output, {task: targets[task] for task in model.tasks})
    assert total.requires_grad and list(per_task) == ["digit", "sum"]
    with pytest.warns(UnknownTaskWarning, match=r"targets has task 'match', which this model does not have; "
                                                r"it is ignored. The model's tasks: digit, sum"):
        with_extra, _ = model.compute_loss(output, targets)
    assert torch.equal(with_extra, total)
    with pytest.warns(UnknownTaskWarning, match=r"task_masks has task 'sun' \(did you mean 'sum'\?\)"):
        model.compute_loss(output, {"sum": targets["sum"]}, {"sun": torch.zeros(3, dtype=torch.bool)})


@pytest.mark.parametrize("edit, path, message", [
    (lambda s: s.pop("fusion"), "fusion", "missing required key"),
    (lambda s: s.update(fusoin={"name": "concat"}), "fusoin", "did you mean 'fusion'"),
    (lambda s: s.update(dim="wide"), "dim", "expected int, got str"),
    (lambda s: s.update(encoders=[]), "encoders", "expected a mapping"),
    (lambda s: s.update(tasks={}), "tasks", "must not be empty"),
    (lambda s: s["tasks"]["digit"].update(num_classes="ten"), "tasks.digit.num_classes", "expects int"),
    (lambda s: s["tasks"]["digit"].pop("num_classes"), "tasks.digit.num_classes", "missing required parameter"),
    (lambda s: s["tasks"]["digit"].update(num_clases=10), "tasks.digit.num_clases", "did you mean 'num_classes'"),
    (lambda s: s["tasks"]["digit"].pop("head"), "tasks.digit.head", "missing"),
    (lambda s: s["tasks"]["digit"].update(head="clasification"), "tasks.digit.head", "did you mean 'classification'"),
    (lambda s: s["encoders"]["audio"].update(name="seq"), "encoders.audio.name", "unknown encoder 'seq'"),
    (lambda s: s["fusion"].update(input_dims={}), "fusion.input_dims", "set by mtmm"),
    (lambda s: s["tasks"]["sum"].update(loss="hinge"), "tasks.sum", "mse"),
    (lambda s: s.update(modality_dropout=1.5), "modality_dropout", "[0, 1)"),
    (lambda s: s.update(weighting={"name": "static", "weights": {"digti": 1.0}}), "weighting", "digti"),
])
def test_invalid_specs_name_the_path(edit, path, message):
    spec = copy.deepcopy(image_audio_spec())
    edit(spec)
    with pytest.raises(SpecError) as error:
        build_model(spec)
    assert error.value.path == path, str(error.value)
    assert message in str(error.value)


def test_optional_sections_default_their_component_name():
    model = build_model(image_audio_spec(architecture={"hidden": 48}, weighting={}))
    assert type(model.architecture).__name__ == "HardParameterSharing"
    assert type(model.weighting).__name__ == "EqualWeighting"
    assert model.architecture.out_dim == 48


def test_bad_batches_name_the_modality_and_dimension():
    model = build_model(image_audio_spec())
    inputs, lengths, _ = image_audio_batch(4)
    with pytest.raises(ValueError, match=r"modality 'audio'.*13.*12"):
        model(dict(inputs, audio=torch.randn(4, 20, 12)), lengths)
    with pytest.raises(ValueError, match=r"unknown modality 'video'; this model takes audio, image"):
        model(dict(inputs, video=torch.randn(4, 3)))
    with pytest.raises(ValueError, match="different batch sizes"):
        model(dict(inputs, image=torch.randn(5, 1, 8, 8)), lengths)
    with pytest.raises(ValueError, match=r"samples \[1\] have no modality present"):
        model(inputs, lengths, {"image": torch.tensor([True, False, True, True]),
                                "audio": torch.tensor([True, False, True, True])})


def test_modality_dropout_hides_modalities_but_keeps_one_per_sample():
    model = build_model(image_audio_spec(modality_dropout=0.7))
    inputs, lengths, _ = image_audio_batch(64)
    model.train()
    present = model(inputs, lengths).present
    stacked = torch.stack(list(present.values()))
    assert stacked.any(dim=0).all()
    assert not stacked.all()
    model.eval()
    assert torch.stack(list(model(inputs, lengths).present.values())).all()


def test_task_masks_and_missing_targets_leave_tasks_out_of_the_loss():
    model = build_model(image_audio_spec(weighting="equal"))
    inputs, lengths, targets = image_audio_batch(4)
    output = model(inputs, lengths)
    masks = {"digit": torch.zeros(4, dtype=torch.bool)}
    total, per_task = model.compute_loss(output, {"digit": targets["digit"], "sum": targets["sum"]}, masks)
    assert per_task["digit"].item() == 0.0 and per_task["match"].item() == 0.0
    torch.testing.assert_close(total, per_task["sum"])
    assert per_task["sum"] > 0


def test_contrastive_task_counts_only_samples_with_both_modalities():
    spec = image_audio_spec()
    spec["tasks"] = {"align": {"head": "contrastive", "modalities": ["image", "audio"]}}
    model = build_model(spec)
    inputs, lengths, _ = image_audio_batch(5)
    present = {"audio": torch.tensor([True, True, False, True, True])}
    output = model(inputs, lengths, present)
    logits = output.predictions["align"]
    keep = torch.tensor([0, 1, 3, 4])
    sub = logits[keep][:, keep]
    labels = torch.arange(4)
    expected = 0.5 * (torch.nn.functional.cross_entropy(sub, labels) + torch.nn.functional.cross_entropy(sub.t(), labels))
    _, per_task = model.compute_loss(output, {})
    torch.testing.assert_close(per_task["align"], expected)


@pytest.mark.parametrize("architecture", [c.name for c in mtmm_core.list_components("architecture")])
def test_every_architecture_and_head_trains_with_a_modality_missing_for_some_samples(architecture):
    spec = image_audio_spec("mean", architecture={"name": architecture})
    spec["tasks"]["tags"] = {"head": "binary", "num_labels": 3}
    spec["tasks"]["align"] = {"head": "contrastive", "modalities": ["image", "audio"]}
    model = build_model(spec)
    inputs, lengths, targets = image_audio_batch(6)
    targets["tags"] = torch.randint(0, 2, (6, 3)).float()
    present = {"image": torch.tensor([True, True, False, True, False, True]),
               "audio": torch.tensor([False, True, True, True, True, False])}
    output = model(inputs, lengths, present)
    total, per_task = model.compute_loss(output, targets)
    total.backward()
    assert all(torch.isfinite(loss) and loss > 0 for loss in per_task.values())
    for task, head in model.heads.items():
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), task
    assert all(torch.isfinite(p.grad).all() for p in model.architecture.parameters())


def test_a_bug_inside_a_components_constructor_names_the_component_and_keeps_the_chain():
    from torch import nn

    import mtmm_core
    from mtmm_core import plugins

    class BrokenFusion(nn.Module):
        def __init__(self, *, input_dims, dim=128):
            super().__init__()
            self.project = nn.Linear(dim)  # the bug: Linear needs two sizes

    class Plugin:
        @mtmm_core.hookimpl
        def register_fusions(self, register):
            register("broken_fusion", BrokenFusion)

    name = plugins.register_plugin(Plugin(), name="test-broken-fusion")
    try:
        spec = {"dim": 16, "encoders": {"tabular": {"name": "tabular", "num_numeric": 3}},
                "fusion": "broken_fusion", "tasks": {"y": {"head": "regression"}}}
        with pytest.raises(SpecError, match=r"fusion: fusion 'broken_fusion' from <in-process> *failed while being "
                                            r"built, with TypeError: .*Linear") as error:
            build_model(spec)
        assert isinstance(error.value.__cause__, TypeError)
    finally:
        plugins.unregister_plugin(name)


def test_a_component_breaking_its_contract_at_run_time_is_named_by_registered_name_and_distribution():
    from torch import nn

    from mtmm_core import plugins

    class WideFusion(nn.Module):
        def __init__(self, *, input_dims, dim=128):
            super().__init__()
            self.out_dim = dim

        def forward(self, tokens, masks, present):
            batch = next(iter(tokens.values())).shape[0]
            return torch.zeros(batch, self.out_dim + 1)  # one feature too many

    class Plugin:
        @mtmm_core.hookimpl
        def register_fusions(self, register):
            register("wide_fusion", WideFusion)

    name = plugins.register_plugin(Plugin(), name="test-wide-fusion")
    try:
        model = build_model({"dim": 8, "encoders": {"x": {"name": "tabular", "num_numeric": 3}},
                             "fusion": "wide_fusion", "tasks": {"y": {"head": "regression"}}})
        with pytest.raises(ValueError, match=r"fusion 'wide_fusion' from <in-process> *returned shape \(2, 9\), "
                                             r"expected \[B=2, out_dim=8\]"):
            model({"x": torch.randn(2, 3)})
    finally:
        plugins.unregister_plugin(name)
