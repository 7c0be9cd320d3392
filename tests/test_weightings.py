"""Built-in loss weightings: values, gradients against the formulas, and validation."""

import pluggy
import pytest
import torch

import mtmm_plugins.weightings
from mtmm_core import hookspecs
from mtmm_plugins.weightings import EqualWeighting, StaticWeighting, UncertaintyWeighting

TASKS = ["emotion", "sentiment", "age"]


def random_losses() -> torch.Tensor:
    return torch.rand(len(TASKS)) * 3 + 0.1


def test_hook_registers_every_weighting():
    manager = pluggy.PluginManager("mtmm")
    manager.add_hookspecs(hookspecs)
    manager.register(mtmm_plugins.weightings)
    names = {}
    manager.hook.register_weightings(register=lambda name, factory, **metadata: names.setdefault(name, factory))
    assert names == mtmm_plugins.weightings.BUILTIN_WEIGHTINGS
    assert {"equal": EqualWeighting, "static": StaticWeighting, "uncertainty": UncertaintyWeighting}.items() <= names.items()


def test_equal_is_the_sum():
    losses = random_losses()
    weighting = EqualWeighting(tasks=TASKS)
    torch.testing.assert_close(weighting(losses), losses.sum())
    torch.testing.assert_close(weighting.weights(), torch.ones(3))


@pytest.mark.parametrize("as_dict", [False, True])
def test_static_is_the_weighted_sum(as_dict):
    values = torch.rand(3) * 2
    weights = dict(zip(TASKS, values.tolist())) if as_dict else values.tolist()
    weighting = StaticWeighting(tasks=TASKS, weights=weights)
    losses = random_losses().requires_grad_()
    total = weighting(losses)
    torch.testing.assert_close(total, (values * losses).sum())
    total.backward()
    torch.testing.assert_close(losses.grad, values)
    torch.testing.assert_close(weighting.weights(), values)
    assert "task_weights" in weighting.state_dict()


def test_static_dict_leaves_unnamed_tasks_at_one():
    weighting = StaticWeighting(tasks=TASKS, weights={"age": 0.25})
    torch.testing.assert_close(weighting.weights(), torch.tensor([1.0, 1.0, 0.25]))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"emotion": 1.0, "valence": 2.0, "arousal": 1.0}, "valence, arousal.*emotion, sentiment, age"),
        ([1.0, 2.0], "2 entries.*3 tasks"),
        ([1.0, -0.5, 1.0], "'sentiment'.*>= 0.*-0.5"),
        ({"age": float("nan")}, "'age'.*finite"),
    ],
)
def test_static_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        StaticWeighting(tasks=TASKS, weights=weights)


@pytest.mark.parametrize("factory", [EqualWeighting, StaticWeighting, UncertaintyWeighting])
def test_weightings_reject_wrong_number_of_losses(factory):
    params = {"weights": [1.0, 1.0, 1.0]} if factory is StaticWeighting else {}
    weighting = factory(tasks=TASKS, **params)
    with pytest.raises(ValueError, match=r"shape \[3\].*got \[2\]"):
        weighting(torch.rand(2))


def test_uncertainty_default_form_value_and_gradient():
    weighting = UncertaintyWeighting(tasks=TASKS)
    with torch.no_grad():
        weighting.log_variances.copy_(torch.randn(3))
    s = weighting.log_variances.detach().clone()
    losses = random_losses()
    total = weighting(losses)
    torch.testing.assert_close(total, (0.5 * torch.exp(-s) * losses + 0.5 * s).sum())
    total.backward()
    torch.testing.assert_close(weighting.log_variances.grad, 0.5 * (1 - torch.exp(-s) * losses))
    torch.testing.assert_close(weighting.weights(), 0.5 * torch.exp(-s))


def test_uncertainty_per_type_form_value_and_gradient():
    weighting = UncertaintyWeighting(
        tasks=TASKS, per_type={"emotion": "classification", "sentiment": "classification", "age": "regression"}
    )
    with torch.no_grad():
        weighting.log_variances.copy_(torch.randn(3))
    s = weighting.log_variances.detach().clone()
    losses = random_losses().requires_grad_()
    total = weighting(losses)
    sigma_squared = torch.exp(s)
    log_sigma = 0.5 * s
    expected = (losses[:2] / sigma_squared[:2]).sum() + losses[2] / (2 * sigma_squared[2]) + log_sigma.sum()
    torch.testing.assert_close(total, expected)
    total.backward()
    # d/ds of exp(-s) L + s/2 is 0.5 - exp(-s) L; of 0.5 exp(-s) L + s/2 it is 0.5 (1 - exp(-s) L).
    expected_grad = torch.cat([0.5 - torch.exp(-s[:2]) * losses[:2], 0.5 * (1 - torch.exp(-s[2:]) * losses[2:])])
    torch.testing.assert_close(weighting.log_variances.grad, expected_grad.detach())
    torch.testing.assert_close(losses.grad, torch.exp(-s) * torch.tensor([1.0, 1.0, 0.5]))
    torch.testing.assert_close(weighting.weights(), losses.grad)


def test_uncertainty_init_and_saved_state():
    init = float(torch.randn(()))
    weighting = UncertaintyWeighting(tasks=TASKS, init=init)
    torch.testing.assert_close(weighting.log_variances.detach(), torch.full((3,), init))
    assert {"log_variances", "loss_scales"} <= set(weighting.state_dict())


@pytest.mark.parametrize(
    ("per_type", "message"),
    [({"valence": "regression"}, "valence.*emotion, sentiment, age"), ({"age": "ranking"}, "regression, classification")],
)
def test_uncertainty_rejects_bad_per_type(per_type, message):
    with pytest.raises(ValueError, match=message):
        UncertaintyWeighting(tasks=TASKS, per_type=per_type)


def test_a_weighting_that_returns_per_task_values_is_an_error_naming_it():
    from torch import nn

    from mtmm_core.weighting import weighted_total

    class PerTask(nn.Module):
        def forward(self, losses):
            return losses * 2.0  # [T]: forgot the sum

    with pytest.raises(ValueError, match=r"weighting 'PerTask': forward\(losses \[T=3\]\) must return the "
                                         r"weighted total as a scalar tensor \[\], got shape \[3\]"):
        weighted_total(PerTask(), torch.rand(3, requires_grad=True))
