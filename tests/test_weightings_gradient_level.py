"""Gradient-level weightings on hand-checked gradients, and weighted_backward on a real model."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtmm_core import build_model
from mtmm_core.weighting import weighted_backward
from mtmm_plugins.weightings import (
    AlignedMultitask,
    BUILTIN_WEIGHTINGS,
    ConflictAverseGradient,
    GradNormWeighting,
    ImpartialGradientWeighting,
    MultipleGradientDescent,
    ProjectingConflictingGradients,
)
from mtmm_plugins.weightings.solvers import min_norm_weights

TWO, THREE = ["a", "b"], ["a", "b", "c"]
GRADIENT_LEVEL = [name for name, f in BUILTIN_WEIGHTINGS.items() if getattr(f, "gradient_level", False)]


def test_pcgrad_projects_two_conflicting_gradients():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # dot -1: conflicting
    combined = ProjectingConflictingGradients(tasks=TWO).combine(grads, torch.ones(2))
    # g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1)
    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5]))


def test_pcgrad_leaves_agreeing_gradients_alone():
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(ProjectingConflictingGradients(tasks=TWO).combine(grads, torch.ones(2)), grads.sum(0))


def test_mgda_two_gradients_closed_form():
    grads = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    mgda = MultipleGradientDescent(tasks=TWO)
    combined = mgda.combine(grads, torch.ones(2))
    # gamma = (g2.g2 - g1.g2) / |g1 - g2|^2 = 1 / 5: the point 0.2 g1 + 0.8 g2 = (0.4, 0.8), orthogonal to g1 - g2
    torch.testing.assert_close(combined, torch.tensor([0.4, 0.8]))
    torch.testing.assert_close(mgda.weights(), torch.tensor([0.2, 0.8]))


def test_mgda_min_norm_point_of_three_gradients_meets_the_optimality_conditions():
    torch.manual_seed(0)
    grads = torch.randn(3, 5, dtype=torch.float64)
    gram = grads @ grads.T
    alpha = torch.from_numpy(min_norm_weights(gram.numpy()))
    assert alpha.min() >= 0 and abs(alpha.sum().item() - 1) < 1e-12
    gram_alpha, value = gram @ alpha, alpha @ gram @ alpha
    # KKT: every vertex lies on or above the min-norm point's supporting plane; equality on the support
    assert (gram_alpha >= value - 1e-4).all()
    assert ((gram_alpha - value).abs()[alpha > 1e-3] < 1e-4).all()


def test_cagrad_weights_match_a_grid_search_for_two_tasks():
    grads = torch.tensor([[1.0, 0.2], [-0.5, 1.0]])
    cagrad = ConflictAverseGradient(tasks=TWO, c=0.5)
    gram = (grads @ grads.T).double()
    w = torch.from_numpy(cagrad.simplex_weights(gram))
    g0 = grads.double().mean(0)

    def objective(a: float) -> float:
        gw = a * grads[0].double() + (1 - a) * grads[1].double()
        return float(gw @ g0 + 0.5 * g0.norm() * gw.norm())

    best = min((objective(a / 10000), a / 10000) for a in range(10001))[1]
    assert abs(w[0].item() - best) < 1e-3
    combined = cagrad.combine(grads, torch.ones(2))
    gw = w[0] * grads[0].double() + w[1] * grads[1].double()
    expected = (g0 + 0.5 * g0.norm() / gw.norm() * gw) / 1.5
    torch.testing.assert_close(combined.double(), expected, atol=1e-6, rtol=1e-5)


def test_cagrad_with_c_zero_is_the_mean():
    grads = torch.randn(3, 4)
    torch.testing.assert_close(ConflictAverseGradient(tasks=THREE, c=0.0).combine(grads, torch.ones(3)), grads.mean(0))


def test_imtl_g_projects_equally_onto_every_task_direction():
    torch.manual_seed(1)
    grads = torch.randn(3, 6) * torch.tensor([[1.0], [5.0], [0.2]])
    imtl = ImpartialGradientWeighting(tasks=THREE)
    combined = imtl.combine(grads, torch.ones(3))
    projections = (grads / grads.norm(dim=1, keepdim=True)) @ combined
    torch.testing.assert_close(projections, projections[:1].expand(3), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(imtl.weights().sum(), torch.tensor(1.0))


def test_aligned_mtl_makes_the_gradients_orthogonal_with_equal_norms():
    torch.manual_seed(2)
    grads = torch.randn(3, 7, dtype=torch.float64)
    gram = grads @ grads.T
    balance = torch.from_numpy(AlignedMultitask.balance_matrix(gram))
    aligned = balance @ grads
    torch.testing.assert_close(aligned @ aligned.T, torch.linalg.eigvalsh(gram).min() * torch.eye(3, dtype=torch.float64))
    combined = AlignedMultitask(tasks=THREE).combine(grads.float(), torch.ones(3))
    torch.testing.assert_close(combined, aligned.sum(0).float(), atol=1e-5, rtol=1e-4)


def test_aligned_mtl_of_orthogonal_equal_gradients_is_their_sum():
    grads = torch.eye(3) * 2.0
    torch.testing.assert_close(AlignedMultitask(tasks=THREE).combine(grads, torch.ones(3)), grads.sum(0))


def test_gradnorm_trains_its_weights_with_the_auxiliary_loss():
    gradnorm = GradNormWeighting(tasks=TWO, alpha=1.0)
    grads = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    combined = gradnorm.combine(grads, torch.tensor([1.0, 1.0]))  # first call: L(0) = losses, r = 1
    torch.testing.assert_close(combined, torch.tensor([3.0, 1.0]))  # w = 1 each
    # G = (3, 1), target = mean(G) = 2: d aux / d w = sign(G - 2) * |g| = (3, -1); through w = 2 softmax(s)
    w = torch.ones(2)
    jacobian = torch.diag(w) - torch.outer(w, w) / 2
    torch.testing.assert_close(gradnorm.weight_logits.grad, jacobian @ torch.tensor([3.0, -1.0]))
    optimizer = torch.optim.SGD(gradnorm.parameters(), lr=0.1)
    optimizer.step()
    assert gradnorm.weights()[0] < 1 < gradnorm.weights()[1]  # the task with the big gradient is damped
    restored = GradNormWeighting(tasks=TWO)
    restored.load_state_dict(gradnorm.state_dict())
    torch.testing.assert_close(restored.weights(), gradnorm.weights())
    torch.testing.assert_close(restored.initial_losses, torch.ones(2))


def small_model(weighting: str, **params):
    spec = {
        "dim": 16,
        "encoders": {"image": {"name": "cnn"}, "audio": {"name": "sequence_transformer", "in_features": 5, "depth": 1}},
        "fusion": {"name": "concat"},
        "tasks": {"digit": {"head": "classification", "num_classes": 4}, "match": {"head": "binary"},
                  "size": {"head": "regression"}},
        "weighting": {"name": weighting, **params},
    }
    return build_model(spec)


def model_losses(model, batch: int = 4):
    torch.manual_seed(3)
    inputs = {"image": torch.randn(batch, 1, 8, 8), "audio": torch.randn(batch, 6, 5)}
    targets = {"digit": torch.randint(0, 4, (batch,)), "match": torch.rand(batch).round(), "size": torch.randn(batch)}
    output = model(inputs, {"audio": torch.tensor([6, 3, 1, 6][:batch])})
    return output, model.task_losses(output, targets)


@pytest.mark.parametrize("name", GRADIENT_LEVEL)
def test_weighted_backward_gives_every_parameter_a_finite_gradient(name):
    model = small_model(name)
    output, losses = model_losses(model)
    total = weighted_backward(model.weighting, losses, output.fused)
    assert total.shape == () and torch.isfinite(total)
    for parameter_name, p in model.named_parameters():
        if p.requires_grad and not parameter_name.startswith("weighting."):
            assert p.grad is not None and torch.isfinite(p.grad).all(), parameter_name


def test_representation_mode_equal_combination_matches_plain_backward():
    """A combine that sums the task gradients must reproduce losses.sum().backward() exactly."""
    model = small_model("pcgrad")
    model.weighting.combine = lambda grads, losses: grads.sum(0)
    output, losses = model_losses(model)
    weighted_backward(model.weighting, losses, output.fused)
    via_glue = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    output, losses = model_losses(model)
    losses.sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(via_glue[n], p.grad, msg=n)


def test_parameters_mode_replaces_the_shared_gradient_with_the_combination():
    model = small_model("mgda", gradient_mode="parameters")
    shared = list(model.encoders.parameters()) + list(model.fusion.parameters())
    output, losses = model_losses(model)
    per_task = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
                           if g is not None]) for loss in losses]
    weighted_backward(model.weighting, losses, shared)
    alpha = model.weighting.weights()
    expected = sum(a * g for a, g in zip(alpha, per_task))
    got = torch.cat([p.grad.flatten() for p in shared if p.grad is not None])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    head = model.heads["digit"]
    assert all(p.grad is not None for p in head.parameters())


def test_loss_level_weighting_is_a_plain_backward():
    model = small_model("uncertainty")
    output, losses = model_losses(model)
    total = weighted_backward(model.weighting, losses, output.fused)
    assert model.weighting.log_variances.grad is not None and torch.isfinite(total)


@pytest.mark.parametrize("mode", ["sideways", None])
def test_bad_gradient_mode(mode):
    if mode is not None:
        with pytest.raises(ValueError, match="gradient_mode must be one of"):
            ProjectingConflictingGradients(tasks=TWO, gradient_mode=mode)
        return
    model = small_model("pcgrad")
    output, losses = model_losses(model)
    with pytest.raises(ValueError, match="representation tensor"):
        weighted_backward(model.weighting, losses, list(model.fusion.parameters()))


def test_strategies_handle_parallel_and_zero_gradients():
    for name, factory in itertools.product(GRADIENT_LEVEL, [None]):
        weighting = BUILTIN_WEIGHTINGS[name](tasks=THREE)
        grads = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0]])
        assert torch.isfinite(weighting.combine(grads, torch.ones(3))).all(), name
