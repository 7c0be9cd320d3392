"""Soft parameter sharing, cross-stitch, CGC and PLE: shapes, gradients, missing modalities, the coupling penalty."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pluggy
import pytest
import torch

import mtmm_plugins.architectures
from mtmm_core import build_model, hookspecs
from mtmm_core.trainer import Trainer
from mtmm_core.precision import Precision
from mtmm_core.weighting import weighted_backward
from mtmm_plugins.architectures import (
    CrossStitchNetwork,
    CustomizedGateControl,
    ProgressiveLayeredExtraction,
    SoftParameterSharing,
)

TASK_SPECS = {
    "digit": {"head": "classification", "num_classes": 10},
    "match": {"head": "binary"},
    "sum": {"head": "regression", "loss": "huber"},
    "parity": {"head": "classification", "num_classes": 2},
}
ARCHITECTURES = {
    "soft_sharing": {"name": "soft_sharing", "hidden": 24, "depth": 2, "coupling": 0.01},
    "cross_stitch": {"name": "cross_stitch", "hidden": 24, "depth": 2},
    "cgc": {"name": "cgc", "shared_experts": 2, "task_experts": 1, "expert_hidden": 16, "dim": 24},
    "ple": {"name": "ple", "levels": 2, "shared_experts": 2, "task_experts": 1, "expert_hidden": 16, "dim": 24},
}


def test_hook_registers_the_new_architectures():
    manager = pluggy.PluginManager("mtmm")
    manager.add_hookspecs(hookspecs)
    manager.register(mtmm_plugins.architectures)
    names = {}
    manager.hook.register_architectures(register=lambda name, factory, **metadata: names.setdefault(name, factory))
    assert {name: names[name] for name in ("soft_sharing", "cross_stitch", "cgc", "ple")} == {
        "soft_sharing": SoftParameterSharing, "cross_stitch": CrossStitchNetwork,
        "cgc": CustomizedGateControl, "ple": ProgressiveLayeredExtraction}


def spec(architecture: dict, tasks: int) -> dict:
    return {
        "dim": 16,
        "encoders": {"image": {"name": "cnn", "channels": [8, 16]},
                     "audio": {"name": "sequence_transformer", "in_features": 13, "depth": 1}},
        "fusion": {"name": "concat"},
        "architecture": copy.deepcopy(architecture),
        "tasks": dict(list(TASK_SPECS.items())[:tasks]),
        "weighting": {"name": "equal"},
    }


def batch(size: int = 6):
    inputs = {"image": torch.randn(size, 1, 8, 8), "audio": torch.randn(size, 15, 13)}
    lengths = {"audio": torch.randint(1, 16, (size,))}
    targets = {"digit": torch.randint(0, 10, (size,)), "match": torch.randint(0, 2, (size,)).float(),
               "sum": torch.rand(size) * 18, "parity": torch.randint(0, 2, (size,))}
    return inputs, lengths, targets


@pytest.mark.parametrize("tasks", [2, 4])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_forward_backward_with_a_missing_modality(name, tasks):
    torch.manual_seed(0)
    model = build_model(spec(ARCHITECTURES[name], tasks))
    inputs, lengths, targets = batch()
    present = {"audio": torch.tensor([True, False, True, False, True, True])}
    output = model(inputs, lengths, present)
    assert list(output.predictions) == list(TASK_SPECS)[:tasks]
    assert output.predictions["digit"].shape == (6, 10)
    total, per_task = model.compute_loss(output, targets)
    assert torch.isfinite(total) and len(per_task) == tasks
    total.backward()
    for parameter_name, parameter in model.architecture.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name

    model.eval()
    with torch.no_grad():
        first = model(inputs, lengths, present).predictions
        garbage = model(dict(inputs, audio=inputs["audio"] * 1e3 + 7), lengths, present).predictions
        image_only = model({"image": inputs["image"]}).predictions
    absent = ~present["audio"]
    for task in first:
        torch.testing.assert_close(first[task][absent], garbage[task][absent])
        assert torch.isfinite(image_only[task]).all()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_tasks_get_different_features(name):
    params = {k: v for k, v in ARCHITECTURES[name].items() if k != "name"}
    factory = {"soft_sharing": SoftParameterSharing, "cross_stitch": CrossStitchNetwork,
               "cgc": CustomizedGateControl, "ple": ProgressiveLayeredExtraction}[name]
    module = factory(in_dim=10, tasks=["a", "b", "c"], **params)
    outputs = module(torch.randn(5, 10))
    assert list(outputs) == ["a", "b", "c"] and all(out.shape == (5, module.out_dim) for out in outputs.values())
    assert not torch.allclose(outputs["a"], outputs["b"])


def hand_penalty(module: SoftParameterSharing) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The coupling penalty and its gradient per tower, written out parameter by parameter."""
    towers = [dict(tower.named_parameters()) for tower in module.towers]
    value, grads = 0.0, [{} for _ in towers]
    for name in towers[0]:
        mean = sum(tower[name].detach() for tower in towers) / len(towers)
        for index, tower in enumerate(towers):
            difference = tower[name].detach() - mean
            value += float((difference ** 2).sum())
            # d/d theta_i of sum_j ||theta_j - mean||^2 is 2 (theta_i - mean): the mean's own terms sum to 0
            grads[index][name] = 2 * module.coupling * difference
    return torch.tensor(module.coupling * value), grads


def test_coupling_penalty_value_and_gradient_match_a_hand_computation():
    torch.manual_seed(1)
    module = SoftParameterSharing(in_dim=3, tasks=["a", "b", "c"], hidden=4, depth=2, coupling=0.05)
    penalty = module.regularization()
    expected, expected_grads = hand_penalty(module)
    torch.testing.assert_close(penalty.detach(), expected, rtol=1e-5, atol=1e-6)
    penalty.backward()
    for tower, grads in zip(module.towers, expected_grads):
        for name, parameter in tower.named_parameters():
            torch.testing.assert_close(parameter.grad, grads[name], rtol=1e-5, atol=1e-7)


def test_coupling_penalty_on_a_tiny_case_by_hand():
    module = SoftParameterSharing(in_dim=1, tasks=["a", "b"], hidden=1, depth=1, coupling=0.5)
    with torch.no_grad():
        for tower, (weight, bias) in zip(module.towers, [(1.0, 0.0), (3.0, 2.0)]):
            tower[0].weight.fill_(weight)
            tower[0].bias.fill_(bias)
    # weights 1 and 3 (mean 2): 1 + 1; biases 0 and 2 (mean 1): 1 + 1; times lambda 0.5
    assert module.regularization().item() == pytest.approx(2.0)
    module.regularization().backward()
    assert module.towers[0][0].weight.grad.item() == pytest.approx(-1.0)  # 2 * 0.5 * (1 - 2)
    assert module.towers[1][0].bias.grad.item() == pytest.approx(1.0)  # 2 * 0.5 * (2 - 1)


def test_identical_towers_cost_nothing_and_one_task_costs_nothing():
    module = SoftParameterSharing(in_dim=4, tasks=["a", "b"], hidden=3, depth=2)
    module.towers[1].load_state_dict(module.towers[0].state_dict())
    assert module.regularization().item() == 0.0
    assert SoftParameterSharing(in_dim=4, tasks=["a"]).regularization().item() == 0.0


def test_the_penalty_reaches_the_models_loss():
    model = build_model(spec(ARCHITECTURES["soft_sharing"], 2))
    inputs, lengths, targets = batch()
    output = model(inputs, lengths)
    total, per_task = model.compute_loss(output, targets)
    penalty = model.architecture.regularization()
    assert penalty.item() > 0
    torch.testing.assert_close(total, sum(per_task.values()) + penalty)


@pytest.mark.parametrize("weighting", ["equal", "pcgrad"])
def test_the_trainers_backward_adds_the_penalty_gradient_for_both_kinds_of_weighting(weighting):
    torch.manual_seed(2)
    model_spec = dict(spec(ARCHITECTURES["soft_sharing"], 2), weighting={"name": weighting})
    model = build_model(model_spec)
    inputs, lengths, targets = batch()

    def gradients(with_penalty: bool) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        output = model(inputs, lengths)
        losses = model.task_losses(output, targets)
        if with_penalty:
            trainer = SimpleNamespace(model=model, precision=Precision("fp32", torch.device("cpu"), False))
            Trainer._backward(trainer, losses, output, model.regularization())
        else:
            weighted_backward(model.weighting, losses, output.fused)
        return [p.grad.clone() for p in model.architecture.parameters()]

    without, with_penalty = gradients(False), gradients(True)
    model.zero_grad(set_to_none=True)
    model.regularization().backward()
    penalty_only = [p.grad for p in model.architecture.parameters()]
    for plain, combined, penalty in zip(without, with_penalty, penalty_only):
        torch.testing.assert_close(combined, plain + penalty)


def test_soft_sharing_refuses_towers_of_different_shapes_naming_them():
    with pytest.raises(ValueError, match=r"width 16: b; width 32: a, c"):
        SoftParameterSharing(in_dim=4, tasks=["a", "b", "c"], hidden=32, hidden_per_task={"b": 16})
    with pytest.raises(ValueError, match="hidden_per_task names unknown tasks: z"):
        SoftParameterSharing(in_dim=4, tasks=["a", "b"], hidden_per_task={"z": 16})
    same = SoftParameterSharing(in_dim=4, tasks=["a", "b"], hidden=32, hidden_per_task={"a": 8, "b": 8})
    assert same.out_dim == 8


def test_cross_stitch_at_identity_equals_independent_towers():
    torch.manual_seed(3)
    module = CrossStitchNetwork(in_dim=6, tasks=["a", "b", "c"], hidden=5, depth=3, self_weight=1.0)
    torch.testing.assert_close(module.stitches.detach(), torch.eye(3).repeat(3, 1, 1))
    x = torch.randn(4, 6)
    outputs = module(x)
    for task, tower in zip(module.tasks, module.towers):
        independent = x
        for block in tower:
            independent = block(independent)
        torch.testing.assert_close(outputs[task], independent)


def test_cross_stitch_starts_near_identity_with_rows_summing_to_one():
    module = CrossStitchNetwork(in_dim=4, tasks=["a", "b", "c", "d"], depth=2)
    stitch = module.stitches.detach()
    assert stitch.shape == (2, 4, 4)
    torch.testing.assert_close(torch.diagonal(stitch, dim1=1, dim2=2), torch.full((2, 4), 0.9))
    torch.testing.assert_close(stitch.sum(dim=-1), torch.ones(2, 4))
    assert CrossStitchNetwork(in_dim=4, tasks=["a"]).stitches.detach().flatten().tolist() == [1.0, 1.0]


def test_cross_stitch_mixes_the_towers_by_the_matrix():
    module = CrossStitchNetwork(in_dim=3, tasks=["a", "b"], hidden=4, depth=1, self_weight=0.7)
    x = torch.randn(5, 3)
    outputs = module(x)
    a, b = module.towers[0][0](x), module.towers[1][0](x)
    torch.testing.assert_close(outputs["a"], 0.7 * a + 0.3 * b)
    torch.testing.assert_close(outputs["b"], 0.3 * a + 0.7 * b)


def test_ple_gates_are_distributions_over_own_and_shared_experts():
    module = ProgressiveLayeredExtraction(in_dim=8, tasks=["a", "b"], levels=3, shared_experts=2, task_experts=2,
                                          expert_hidden=8, dim=6)
    outputs = module(torch.randn(7, 8))
    assert all(out.shape == (7, 6) for out in outputs.values())
    assert len(module.levels) == 3
    assert module.levels[-1].shared_gate is None and module.levels[0].shared_gate.out_features == 2 * 2 + 2
    assert module.levels[0].candidates.tolist() == [[0, 1, 4, 5], [2, 3, 4, 5]]  # own experts, then shared
    for weights in module.last_gate_weights.values():
        assert weights.shape == (7, 4) and (weights >= 0).all()
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(7))


def expert(bank, index: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``index`` of a bank, written out as two linear layers."""
    hidden = torch.nn.functional.gelu(x @ bank.weight_in[index] + bank.bias_in[index])
    return hidden @ bank.weight_out[index] + bank.bias_out[index]


def test_cgc_is_ple_with_one_level_and_mixes_own_and_shared_experts():
    torch.manual_seed(4)
    cgc = CustomizedGateControl(in_dim=5, tasks=["a", "b"], shared_experts=1, task_experts=1, expert_hidden=4, dim=3)
    ple = ProgressiveLayeredExtraction(in_dim=5, tasks=["a", "b"], levels=1, shared_experts=1, task_experts=1,
                                       expert_hidden=4, dim=3)
    ple.load_state_dict(cgc.state_dict())
    x = torch.randn(4, 5)
    outputs = cgc(x)
    for task, features in outputs.items():
        torch.testing.assert_close(features, ple(x)[task])
    level = cgc.levels[0]
    for index, task in enumerate(["a", "b"]):
        own, shared = expert(level.experts, index, x), expert(level.experts, 2, x)
        gate = (x @ level.gate_weight[index] + level.gate_bias[index]).softmax(dim=-1)
        torch.testing.assert_close(outputs[task], gate[:, :1] * own + gate[:, 1:] * shared)


def test_a_ple_upper_level_reads_the_task_outputs_and_the_shared_mixture():
    torch.manual_seed(5)
    module = ProgressiveLayeredExtraction(in_dim=4, tasks=["a", "b"], levels=2, shared_experts=1, task_experts=1,
                                          expert_hidden=3, dim=2)
    x = torch.randn(3, 4)
    first, top = module.levels
    experts = torch.stack([expert(first.experts, e, x) for e in range(3)])  # a, b, shared
    shared_next = torch.einsum("be,ebd->bd", first.shared_gate(x).softmax(dim=-1), experts)
    task_inputs = []
    for t in range(2):
        gate = (x @ first.gate_weight[t] + first.gate_bias[t]).softmax(dim=-1)
        task_inputs.append(gate[:, :1] * experts[t] + gate[:, 1:] * experts[2])
    outputs = module(x)
    for t, task in enumerate(["a", "b"]):
        own, shared = expert(top.experts, t, task_inputs[t]), expert(top.experts, 2, shared_next)
        gate = (task_inputs[t] @ top.gate_weight[t] + top.gate_bias[t]).softmax(dim=-1)
        torch.testing.assert_close(outputs[task], gate[:, :1] * own + gate[:, 1:] * shared)


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (SoftParameterSharing, {"coupling": -1.0}, "coupling"),
        (SoftParameterSharing, {"depth": 0}, "depth"),
        (CrossStitchNetwork, {"self_weight": 1.5}, "self_weight"),
        (CrossStitchNetwork, {"tasks": ["a", "a"]}, "repeated: a"),
        (ProgressiveLayeredExtraction, {"levels": 0}, "levels"),
        (ProgressiveLayeredExtraction, {"shared_experts": 0, "task_experts": 0}, "at least 1"),
    ],
)
def test_new_architectures_reject_bad_parameters(factory, params, message):
    with pytest.raises(ValueError, match=message):
        factory(in_dim=4, **{"tasks": ["a", "b"], **params})


def test_a_spec_with_mismatched_towers_is_an_error_naming_the_path():
    import mtmm_core

    bad = spec({"name": "soft_sharing", "hidden": 16, "hidden_per_task": {"match": 8}}, 2)
    with pytest.raises(mtmm_core.SpecError, match=r"^architecture: .*width 8: match; width 16: digit"):
        build_model(bad)
