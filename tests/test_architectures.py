"""Built-in multitask architectures: shapes, gradients, gates and validation."""

import pluggy
import pytest
import torch

import mtmm_plugins.architectures
from mtmm_core import hookspecs
from mtmm_plugins.architectures import (
    CrossStitchNetwork,
    CustomizedGateControl,
    HardParameterSharing,
    MultiGateMixtureOfExperts,
    ProgressiveLayeredExtraction,
    SoftParameterSharing,
)

TASKS = ["emotion", "sentiment", "age"]


def test_hook_registers_every_architecture():
    manager = pluggy.PluginManager("mtmm")
    manager.add_hookspecs(hookspecs)
    manager.register(mtmm_plugins.architectures)
    names = {}
    manager.hook.register_architectures(register=lambda name, factory, **metadata: names.setdefault(name, factory))
    assert names == {"hard_sharing": HardParameterSharing, "mmoe": MultiGateMixtureOfExperts,
                     "soft_sharing": SoftParameterSharing, "cross_stitch": CrossStitchNetwork,
                     "cgc": CustomizedGateControl, "ple": ProgressiveLayeredExtraction}


def assert_gradients_flow(module: torch.nn.Module, outputs: dict[str, torch.Tensor]) -> None:
    sum((out * torch.randn_like(out)).sum() for out in outputs.values()).backward()
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("depth", "out_dim"), [(0, 12), (1, 32), (2, 32)])
def test_hard_sharing_gives_every_task_the_same_features(depth, out_dim):
    batch = int(torch.randint(1, 8, ()))
    model = HardParameterSharing(in_dim=12, tasks=TASKS, hidden=32, depth=depth)
    x = torch.randn(batch, 12)
    outputs = model(x)
    assert model.out_dim == out_dim
    assert list(outputs) == TASKS
    for features in outputs.values():
        assert features.shape == (batch, out_dim)
        assert torch.equal(features, outputs[TASKS[0]])
    if depth == 0:
        assert torch.equal(outputs[TASKS[0]], x)
    else:
        assert_gradients_flow(model, outputs)


def test_mmoe_shapes_gradients_and_gates():
    batch, experts = 7, 3
    model = MultiGateMixtureOfExperts(in_dim=10, tasks=TASKS, num_experts=experts, expert_hidden=16, dim=8)
    outputs = model(torch.randn(batch, 10))
    assert model.out_dim == 8
    assert list(outputs) == TASKS and all(out.shape == (batch, 8) for out in outputs.values())
    gates = model.last_gate_weights
    assert list(gates) == TASKS
    for weights in gates.values():
        assert weights.shape == (batch, experts) and (weights >= 0).all()
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(batch))
    assert not torch.allclose(gates["emotion"], gates["sentiment"])
    assert not torch.allclose(outputs["emotion"], outputs["sentiment"])
    assert_gradients_flow(model, outputs)


def test_mmoe_output_is_the_gate_weighted_sum_of_experts():
    model = MultiGateMixtureOfExperts(in_dim=5, tasks=["a", "b"], num_experts=2, expert_hidden=4, dim=3)
    x = torch.randn(4, 5)
    outputs = model(x)
    expert_outputs = [expert(x) for expert in model.experts]
    for task in ("a", "b"):
        gate = model.last_gate_weights[task]
        expected = gate[:, :1] * expert_outputs[0] + gate[:, 1:] * expert_outputs[1]
        torch.testing.assert_close(outputs[task], expected)


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (HardParameterSharing, {"tasks": []}, "tasks"),
        (HardParameterSharing, {"tasks": ["a", "a"]}, "repeated: a"),
        (HardParameterSharing, {"tasks": ["a"], "depth": -1}, "depth"),
        (MultiGateMixtureOfExperts, {"tasks": ["a"], "num_experts": 0}, "num_experts"),
        (MultiGateMixtureOfExperts, {"tasks": ["a"], "dropout": -0.1}, "dropout"),
    ],
)
def test_architectures_reject_bad_parameters(factory, params, message):
    with pytest.raises(ValueError, match=message):
        factory(in_dim=4, **params)


def test_architecture_rejects_wrong_feature_width():
    with pytest.raises(ValueError, match=r"\[B, 4\].*\[2, 6\]"):
        MultiGateMixtureOfExperts(in_dim=4, tasks=["a"])(torch.randn(2, 6))
