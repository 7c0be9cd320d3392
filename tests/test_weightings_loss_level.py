"""DWA, RLW, GLS and FAMO against their formulas on hand-checked cases; state in checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from mtmm_plugins.weightings import (
    DynamicWeightAverage,
    FastAdaptiveWeighting,
    GeometricLossWeighting,
    RandomLossWeighting,
)

TASKS = ["a", "b", "c"]


def test_dwa_is_equal_for_two_epochs_then_follows_the_descent_rates():
    dwa = DynamicWeightAverage(tasks=TASKS, temperature=2.0)
    losses = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(dwa(losses), losses.sum())
    dwa.end_epoch(torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(dwa.weights(), torch.ones(3))
    dwa.end_epoch(torch.tensor([0.5, 1.0, 2.0]))  # ratios r = 0.5, 1, 2
    expected = torch.tensor([math.exp(0.25), math.exp(0.5), math.exp(1.0)])
    expected = 3 * expected / expected.sum()
    torch.testing.assert_close(dwa.weights(), expected)
    torch.testing.assert_close(dwa(losses), (expected * losses).sum())
    dwa.end_epoch(torch.tensor([0.5, 0.5, 0.5]))  # now r = 1, 0.5, 0.25
    expected = torch.softmax(torch.tensor([1.0, 0.5, 0.25]) / 2, dim=0) * 3
    torch.testing.assert_close(dwa.weights(), expected)


def test_dwa_history_survives_a_state_dict_round_trip():
    dwa = DynamicWeightAverage(tasks=TASKS)
    dwa.end_epoch(torch.tensor([1.0, 2.0, 3.0]))
    restored = DynamicWeightAverage(tasks=TASKS)
    restored.load_state_dict(dwa.state_dict())
    restored.end_epoch(torch.tensor([2.0, 2.0, 2.0]))
    dwa.end_epoch(torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(restored.weights(), dwa.weights())
    assert not torch.equal(restored.weights(), torch.ones(3))


def test_rlw_draws_softmax_normal_weights_in_training_and_uses_the_mean_in_eval():
    rlw = RandomLossWeighting(tasks=TASKS)
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    torch.manual_seed(7)
    total = rlw(losses)
    torch.manual_seed(7)
    expected = torch.softmax(torch.randn(3), dim=0)
    torch.testing.assert_close(rlw.weights(), expected)
    total.backward()
    torch.testing.assert_close(losses.grad, expected)
    first = rlw.weights()
    rlw(losses)
    assert not torch.equal(first, rlw.weights())
    rlw.eval()
    torch.testing.assert_close(rlw(losses), losses.sum() / 3)


def test_gls_is_the_geometric_mean_with_its_gradient():
    gls = GeometricLossWeighting(tasks=TASKS)
    losses = torch.tensor([1.0, 8.0, 27.0], requires_grad=True)
    total = gls(losses)
    torch.testing.assert_close(total, torch.tensor(6.0))
    total.backward()
    expected = 6.0 / (3 * losses.detach())  # d (prod L)^(1/T) / d L_i = total / (T L_i)
    torch.testing.assert_close(losses.grad, expected)
    torch.testing.assert_close(gls.weights(), expected)


def test_gls_survives_a_zero_loss():
    losses = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    total = GeometricLossWeighting(tasks=TASKS)(losses)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(losses.grad).all()


def test_famo_loss_gradient_is_z_over_c_d():
    famo = FastAdaptiveWeighting(tasks=TASKS, min_losses=[0.0, 0.5, 0.0])
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.2, -0.1, 0.4]))
    losses = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    total = famo(losses)
    z = torch.softmax(torch.tensor([0.2, -0.1, 0.4]), 0)
    gaps = torch.tensor([1.0, 1.5, 0.5]) + 1e-8
    c = (z / gaps).sum()
    torch.testing.assert_close(total, (z * gaps.log()).sum() / c)
    total.backward()
    torch.testing.assert_close(losses.grad, z / (c * gaps))
    torch.testing.assert_close(famo.weights().sum(), torch.tensor(1.0))


def test_famo_after_step_is_one_adam_step_on_the_softmax_jacobian():
    famo = FastAdaptiveWeighting(tasks=TASKS, lr=0.025, weight_decay=0.0)
    before, after = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 2.0, 2.0])
    famo(before)
    famo.after_step(after)
    delta = before.log() - after.log()
    z = torch.full((3,), 1 / 3)
    grad = z * delta - z * (z @ delta)
    # Adam's first step moves each coordinate by lr * sign(grad) (bias-corrected m / sqrt(v))
    torch.testing.assert_close(famo.logits.detach(), -0.025 * grad / (grad.abs() + 1e-8), atol=1e-6, rtol=1e-5)
    # the task whose loss fell the most (a) loses weight; the one that did not move (b) gains
    assert famo.logits[0] < 0 < famo.logits[1]


def test_famo_logits_and_optimizer_state_survive_a_state_dict_round_trip():
    famo = FastAdaptiveWeighting(tasks=TASKS)
    for step in range(3):
        famo(torch.tensor([1.0, 2.0, 3.0]) / (step + 1))
        famo.after_step(torch.tensor([0.9, 1.9, 2.0]) / (step + 1))
    restored = FastAdaptiveWeighting(tasks=TASKS)
    restored.load_state_dict(famo.state_dict())
    torch.testing.assert_close(restored.logits, famo.logits)
    for module in (famo, restored):
        module(torch.tensor([0.3, 0.6, 0.9]))
        module.after_step(torch.tensor([0.2, 0.6, 0.8]))
    torch.testing.assert_close(restored.logits, famo.logits)
    assert {"logits", "adam_exp_avg", "adam_exp_avg_sq", "adam_steps", "log_losses_before"} <= set(famo.state_dict())


@pytest.mark.parametrize(("factory", "params", "message"), [
    (DynamicWeightAverage, {"temperature": 0.0}, "temperature"),
    (FastAdaptiveWeighting, {"min_losses": [0.0]}, "min_losses has 1"),
])
def test_bad_parameters(factory, params, message):
    with pytest.raises(ValueError, match=message):
        factory(tasks=TASKS, **params)


def test_rlw_draws_follow_the_papers_distributions():
    """Lin et al. 2022: normal -> softmax(z), uniform -> u / sum(u), Dirichlet(a) -> mean 1/T, var (T-1)/(T^2 (Ta+1))."""
    from mtmm_plugins.weightings import RandomLossWeighting

    tasks, losses = ["a", "b", "c", "d"], torch.rand(4) + 0.5
    for distribution, reference in [("normal", lambda: torch.softmax(torch.randn(4), 0)),
                                    ("uniform", lambda: (lambda u: u / u.sum())(torch.rand(4)))]:
        rlw = RandomLossWeighting(tasks=tasks, distribution=distribution)
        seed = int(torch.randint(1 << 30, ()))
        torch.manual_seed(seed)
        total = rlw(losses)
        torch.manual_seed(seed)
        expected = reference()
        torch.testing.assert_close(rlw.weights(), expected)
        torch.testing.assert_close(total, (expected * losses).sum())
    rlw = RandomLossWeighting(tasks=tasks, distribution="dirichlet", concentration=0.5)
    draws = torch.stack([(rlw(losses), rlw.weights())[1] for _ in range(4000)])
    assert (draws >= 0).all() and torch.allclose(draws.sum(1), torch.ones(4000))
    torch.testing.assert_close(draws.mean(0), torch.full((4,), 0.25), atol=0.02, rtol=0)
    expected_variance = 3 / (16 * (4 * 0.5 + 1))  # (T - 1) / (T^2 (T a + 1))
    torch.testing.assert_close(draws.var(0), torch.full((4,), expected_variance), atol=0.01, rtol=0)
    rlw.eval()
    torch.testing.assert_close(rlw(losses), losses.mean())
