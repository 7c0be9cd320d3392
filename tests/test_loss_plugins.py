"""Losses are an open set: registered through register_losses, named by a head's loss_kind, checked
at build time; built-in kinds stay on the fused kernel, a plugin's loss runs its own function, both
in one compute_loss. References are written here in float64, from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtmm_core
from mtmm_core import SpecError, build_model, plugins
from mtmm_core.errors import ComponentError
from mtmm_core.losses import task_loss

THRESHOLDS = 4  # an ordinal task with 5 grades: 4 cumulative logits "grade > k"


def ordinal(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cumulative-link loss: BCE of logit k against [grade > k], mean over thresholds and masked samples."""
    levels = torch.arange(prediction.shape[1], device=prediction.device)
    above = (target.long()[:, None] > levels).float()
    per_sample = F.binary_cross_entropy_with_logits(prediction.float(), above, reduction="none").mean(dim=1)
    return torch.where(mask, per_sample, 0.0).sum() / mask.sum().clamp_min(1)


def ordinal_reference(prediction: torch.Tensor, target: torch.Tensor, rows: list[int]) -> float:
    """The same loss written elementwise in float64: -[y log s(z) + (1 - y) log(1 - s(z))]."""
    total = 0.0
    for b in rows:
        for k in range(prediction.shape[1]):
            z, y = float(prediction[b, k]), float(int(target[b]) > k)
            s = 1.0 / (1.0 + math.exp(-z))
            total += -(y * math.log(s) + (1 - y) * math.log(1 - s)) / prediction.shape[1]
    return total / max(1, len(rows))


class OrdinalHead(nn.Module):
    """Grades 0..4 from features: 4 cumulative logits."""

    loss_kind = "ordinal"
    metrics = ("mae",)

    def __init__(self, *, in_dim: int):
        super().__init__()
        self.out_dim = THRESHOLDS
        self.linear = nn.Linear(in_dim, THRESHOLDS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class NamedLossHead(OrdinalHead):
    loss_kind = "set_below"  # replaced per test


def vector_loss(prediction, target, mask):
    return (prediction - target[:, None]).pow(2).mean(dim=1)  # [B]: forgot the mean over samples


def broken_loss(prediction, target, mask):
    return prediction.missing_attribute


def ignoring_loss(prediction, target, mask):
    """Mean squared value of the first logit over the masked samples (targets -100 are folded out)."""
    assert bool(((target != -100) | ~mask).all()), "a -100 target reached the loss inside the mask"
    return torch.where(mask, prediction[:, 0].float() ** 2, 0.0).sum() / mask.sum().clamp_min(1)


def targetless_loss(prediction, target, mask):
    assert target is None
    return torch.where(mask, prediction.float().pow(2).sum(dim=1), 0.0).sum() / mask.sum().clamp_min(1)


class Plugin:
    @mtmm_core.hookimpl
    def register_losses(self, register):
        register("ordinal", ordinal)
        register("vector_loss", vector_loss)
        register("broken_loss", broken_loss)
        register("ignoring", ignoring_loss, ignore_index=-100)
        register("targetless", targetless_loss, needs_target=False)

    @mtmm_core.hookimpl
    def register_heads(self, register):
        register("ordinal", OrdinalHead)
        for loss in ("vector_loss", "broken_loss", "ignoring", "targetless", "ordinl"):
            register(f"head_{loss}", type(f"Head_{loss}", (OrdinalHead,), {"loss_kind": loss}))


@pytest.fixture
def loss_plugin():
    name = plugins.register_plugin(Plugin(), name="test-loss-plugin")
    yield
    plugins.unregister_plugin(name)


def spec(**tasks) -> dict:
    return {"dim": 8, "encoders": {"x": {"name": "tabular", "num_numeric": 3}}, "fusion": "concat",
            "tasks": tasks}


def batch(size: int = 9, tasks: tuple[str, ...] = ("grade", "digit")):
    inputs = {"x": torch.randn(size, 3)}
    targets = {"grade": torch.randint(0, 5, (size,)), "digit": torch.randint(0, 3, (size,))}
    return inputs, {task: targets[task] for task in tasks}


def test_the_builtin_losses_are_registered_components():
    names = {c.name: c for c in mtmm_core.list_components("loss")}
    assert set(names) == {"cross_entropy", "bce", "mse", "l1", "huber", "contrastive"}
    assert {c.distribution for c in names.values()} == {"mtmm"}
    assert not names["contrastive"].metadata["needs_target"]
    assert names["cross_entropy"].metadata["ignore_index"] == -100
    assert mtmm_core.KINDS[-1] == "loss" and mtmm_core.describe("losses", "mse")["kind"] == "loss"


@pytest.mark.parametrize("kind", ["cross_entropy", "bce", "mse", "l1", "huber"])
def test_builtin_loss_functions_match_float64_formulas_with_masks(kind):
    B, C = 11, 4
    mask = torch.rand(B) > 0.3
    mask[0] = True
    if kind == "cross_entropy":
        prediction, target = torch.randn(B, C), torch.randint(0, C, (B,))
        target[1] = -100  # unlabelled however the mask says
        p, t = prediction.double(), target
        rows = [b for b in range(B) if mask[b] and t[b] != -100]
        expected = sum(-(p[b, t[b]] - p[b].exp().sum().log()) for b in rows) / len(rows)
    else:
        prediction = torch.randn(B, 3)
        target = torch.rand(B, 3).round() if kind == "bce" else torch.randn(B, 3) * 2
        target[~mask] = float("nan")  # an unlabelled target may hold anything
        p, t = prediction.double(), target.double()
        rows = [b for b in range(B) if mask[b]]

        def element(z, y):
            d = abs(z - y)
            return {"bce": -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z)))),
                    "mse": d * d, "l1": d, "huber": 0.5 * d * d if d < 1 else d - 0.5}[kind]
        expected = sum(element(float(p[b, k]), float(t[b, k])) for b in rows for k in range(3)) / (3 * len(rows))
    value = mtmm_core.get_component("loss", kind).factory(prediction, target, mask)
    assert value.dim() == 0 and torch.isfinite(value)
    assert abs(float(value) - float(expected)) < 1e-5
    assert float(task_loss(kind, prediction, target, mask)) == pytest.approx(float(expected), abs=1e-5)


def test_a_builtin_loss_with_no_labelled_sample_is_zero_with_a_gradient():
    prediction = torch.randn(5, 3, requires_grad=True)
    value = mtmm_core.get_component("loss", "mse").factory(prediction, torch.randn(5, 3), torch.zeros(5, dtype=bool))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.equal(prediction.grad, torch.zeros(5, 3))


def test_a_plugin_loss_and_the_fused_kernel_share_one_compute_loss(loss_plugin, monkeypatch):
    torch.manual_seed(0)
    model = build_model(spec(grade={"head": "ordinal"}, digit={"head": "classification", "num_classes": 3}))
    calls = []
    real = mtmm_core.model.multitask_loss
    monkeypatch.setattr(mtmm_core.model, "multitask_loss",
                        lambda preds, golds, kinds, **kw: calls.append(list(kinds)) or real(preds, golds, kinds, **kw))
    inputs, targets = batch()
    masks = {"grade": torch.tensor([True, False, True, True, False, True, True, True, False])}
    output = model(inputs)
    total, per_task = model.compute_loss(output, targets, masks)
    assert calls == [["cross_entropy"]]  # the built-in kind alone went through the kernel, once
    rows = [b for b in range(9) if masks["grade"][b]]
    assert float(per_task["grade"]) == pytest.approx(ordinal_reference(output.predictions["grade"], targets["grade"], rows), abs=1e-5)
    logits = output.predictions["digit"].double()
    expected_ce = F.cross_entropy(logits, targets["digit"]).item()
    assert float(per_task["digit"]) == pytest.approx(expected_ce, abs=1e-5)
    assert float(total) == pytest.approx(float(per_task["grade"]) + expected_ce, abs=1e-5)  # equal weighting
    total.backward()
    assert model.heads["grade"].linear.weight.grad.abs().sum() > 0


def test_a_task_whose_labels_are_all_masked_is_absent_and_zero(loss_plugin):
    model = build_model(spec(grade={"head": "head_ignoring"}, digit={"head": "classification", "num_classes": 3}))
    inputs, targets = batch(6)
    targets["grade"] = torch.tensor([-100, 2, -100, 1, -100, -100])
    output = model(inputs)
    losses = model.task_losses(output, targets)
    expected = output.predictions["grade"][[1, 3], 0].double().pow(2).mean()
    assert float(losses[0]) == pytest.approx(float(expected), abs=1e-6)
    targets["grade"] = torch.full((6,), -100)
    assert model.labelled_tasks(output, targets).tolist() == [False, True]
    assert float(model.task_losses(output, targets)[0]) == 0.0


def test_a_loss_without_target_is_called_with_none_and_counts_without_labels(loss_plugin):
    model = build_model(spec(grade={"head": "head_targetless"}))
    output = model({"x": torch.randn(4, 3)})
    losses = model.task_losses(output, {})
    assert float(losses[0]) == pytest.approx(float(output.predictions["grade"].double().pow(2).sum(dim=1).mean()), abs=1e-5)
    assert model.labelled_tasks(output, {}).tolist() == [True]


def test_an_unknown_loss_name_is_a_build_error_with_the_close_names(loss_plugin):
    with pytest.raises(SpecError, match=r"tasks\.grade\.head: head 'head_ordinl' names the loss 'ordinl'.*ordinal"):
        build_model(spec(grade={"head": "head_ordinl"}))


def test_a_loss_returning_one_value_per_sample_is_named(loss_plugin):
    model = build_model(spec(grade={"head": "head_vector_loss"}))
    inputs, targets = batch(tasks=("grade",))
    with pytest.raises(ValueError, match=r"loss 'vector_loss' from <in-process> \(task 'grade'\) must return .* "
                                         r"scalar tensor \[\], got shape \[9\]"):
        model.compute_loss(model(inputs), targets)


def test_a_loss_that_raises_is_a_component_error_naming_it_with_the_cause_chained(loss_plugin):
    model = build_model(spec(grade={"head": "head_broken_loss"}))
    inputs, targets = batch(tasks=("grade",))
    with pytest.raises(ComponentError, match=r"loss 'broken_loss' from <in-process> \(task 'grade'\) failed with "
                                             r"AttributeError") as caught:
        model.compute_loss(model(inputs), targets)
    assert isinstance(caught.value.__cause__, AttributeError)


def test_a_regression_head_takes_a_plugin_loss_but_not_a_classification_one(loss_plugin):
    model = build_model(spec(y={"head": "regression", "loss": "ordinal"}))
    assert model.losses["y"].component.name == "ordinal"
    with pytest.raises(SpecError, match=r"tasks\.y.*'cross_entropy'.*mse, l1, huber"):
        build_model(spec(y={"head": "regression", "loss": "cross_entropy"}))
    with pytest.raises(SpecError, match=r"tasks\.y.*'hubber'.*huber"):
        build_model(spec(y={"head": "regression", "loss": "hubber"}))
