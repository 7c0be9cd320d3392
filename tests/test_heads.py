"""Built-in heads: shapes, gradients, contracts and validation."""

import pluggy
import pytest
import torch

import mtmm_plugins.heads
from mtmm_core import hookspecs
import mtmm_core
from mtmm_plugins.heads import BinaryHead, ClassificationHead, ContrastiveAlignmentHead, RegressionHead


def registered_names(plugin, hook_name: str) -> dict[str, object]:
    manager = pluggy.PluginManager("mtmm")
    manager.add_hookspecs(hookspecs)
    manager.register(plugin)
    names = {}
    getattr(manager.hook, hook_name)(register=lambda name, factory, **metadata: names.setdefault(name, factory))
    return names


def assert_gradients_flow(module: torch.nn.Module, output: torch.Tensor) -> None:
    # A random projection of the output, so a constant output direction cannot hide a zero gradient.
    (output * torch.randn_like(output)).sum().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_hook_registers_every_head():
    names = registered_names(mtmm_plugins.heads, "register_heads")
    assert names == {
        "classification": ClassificationHead,
        "binary": BinaryHead,
        "regression": RegressionHead,
        "contrastive": ContrastiveAlignmentHead,
    }
    for factory in names.values():
        assert factory.__doc__.strip().splitlines()[0]


@pytest.mark.parametrize("hidden", [0, 16])
def test_classification_logits(hidden):
    batch, classes = int(torch.randint(2, 9, ())), int(torch.randint(2, 7, ()))
    head = ClassificationHead(in_dim=12, num_classes=classes, hidden=hidden, dropout=0.1)
    logits = head(torch.randn(batch, 12))
    assert logits.shape == (batch, classes)
    assert head.loss_kind == "cross_entropy" and head.metrics == ("accuracy", "macro_f1")
    assert_gradients_flow(head, logits)


@pytest.mark.parametrize(("num_labels", "shape"), [(1, (5,)), (3, (5, 3))])
def test_binary_logits(num_labels, shape):
    head = BinaryHead(in_dim=8, num_labels=num_labels, hidden=4)
    logits = head(torch.randn(5, 8))
    assert logits.shape == shape
    assert head.loss_kind == "bce" and head.metrics == ("accuracy", "auroc")
    assert_gradients_flow(head, logits)


@pytest.mark.parametrize(("out_features", "shape", "loss"), [(1, (6,), "mse"), (2, (6, 2), "huber"), (1, (6,), "l1")])
def test_regression_values(out_features, shape, loss):
    head = RegressionHead(in_dim=8, out_features=out_features, loss=loss)
    values = head(torch.randn(6, 8))
    assert values.shape == shape
    assert head.loss_kind == loss and head.metrics == ("mae", "rmse", "r2")
    assert_gradients_flow(head, values)


def test_every_builtin_loss_has_a_builtin_head():
    heads = [
        ClassificationHead(in_dim=4, num_classes=3),
        BinaryHead(in_dim=4),
        *(RegressionHead(in_dim=4, loss=loss) for loss in ("mse", "l1", "huber")),
        ContrastiveAlignmentHead(in_dim=4, modality_dims={"a": 3, "b": 5}, modalities=["a", "b"]),
    ]
    assert sorted(head.loss_kind for head in heads) == sorted(c.name for c in mtmm_core.list_components("loss"))


def test_regression_rejects_unknown_loss():
    with pytest.raises(ValueError, match="'cross_entropy'.*mse, l1, huber"):
        RegressionHead(in_dim=4, loss="cross_entropy")


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (ClassificationHead, {"num_classes": 1}, "num_classes"),
        (BinaryHead, {"num_labels": 0}, "num_labels"),
        (RegressionHead, {"hidden": -1}, "hidden"),
        (RegressionHead, {"dropout": 1.0}, "dropout"),
    ],
)
def test_heads_reject_bad_parameters(factory, params, message):
    with pytest.raises(ValueError, match=message):
        factory(in_dim=4, **params)


def test_head_rejects_wrong_feature_width():
    with pytest.raises(ValueError, match=r"\[B, 4\].*\[3, 5\]"):
        ClassificationHead(in_dim=4, num_classes=2)(torch.randn(3, 5))


def make_contrastive_inputs(batch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    pooled = {"image": torch.randn(batch, 6), "text": torch.randn(batch, 10)}
    present = {"image": torch.ones(batch, dtype=torch.bool), "text": torch.ones(batch, dtype=torch.bool)}
    return torch.randn(batch, 16), pooled, present


def test_contrastive_logits_are_scaled_cosine_similarities():
    head = ContrastiveAlignmentHead(
        in_dim=16, modality_dims={"image": 6, "text": 10, "audio": 3}, modalities=["image", "text"], temperature=0.1
    )
    assert head.uses_modalities and head.loss_kind == "contrastive" and head.metrics == ("retrieval_accuracy",)
    x, pooled, present = make_contrastive_inputs(5)
    logits = head(x, pooled=pooled, present=present)
    assert logits.shape == (5, 5)
    # Cosine similarities times 1 / temperature lie within [-10, 10] (up to rounding).
    assert logits.abs().max() <= 10.0 + 1e-4
    assert_gradients_flow(head, logits)
    assert head.log_scale.grad.abs() > 0


def test_contrastive_with_a_modality_absent_for_some_samples():
    head = ContrastiveAlignmentHead(in_dim=16, modality_dims={"image": 6, "text": 10}, modalities=["image", "text"])
    x, pooled, present = make_contrastive_inputs(6)
    absent = torch.rand(6) < 0.5
    absent[0] = True
    present["text"] = ~absent
    pooled["text"][absent] = 0.0  # what the masked mean gives for a sample without tokens
    logits = head(x, pooled=pooled, present=present)
    assert logits.shape == (6, 6) and torch.isfinite(logits).all()


def test_contrastive_with_a_modality_missing_from_the_batch():
    head = ContrastiveAlignmentHead(in_dim=16, modality_dims={"image": 6, "text": 10}, modalities=["image", "text"])
    x, pooled, present = make_contrastive_inputs(4)
    del pooled["text"], present["text"]
    logits = head(x, pooled=pooled, present=present)
    assert logits.shape == (4, 4) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("modalities", "message"),
    [(["image"], "exactly two"), (["image", "image"], "exactly two"), (["image", "depth"], r"\['depth'\].*image, text")],
)
def test_contrastive_rejects_bad_modalities(modalities, message):
    with pytest.raises(ValueError, match=message):
        ContrastiveAlignmentHead(in_dim=16, modality_dims={"image": 6, "text": 10}, modalities=modalities)
