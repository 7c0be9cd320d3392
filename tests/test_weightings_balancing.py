"""GradDrop, full IMTL and DB-MTL against float64 transcriptions of their papers.

Inputs are fresh random numbers on every run (the seed is printed, and shown when a test
fails): task counts 2..10, gradient sizes 7..1000, gradient norms spread over a factor 1e3.
The references below are written from the papers' formulas, not from the project's code.
"""

from __future__ import annotations

import math
import secrets

import pytest
import torch

from mtmm_core.checkpoint import load_checkpoint, save_checkpoint
from mtmm_core.errors import NonFiniteError
from mtmm_core.weighting import weighted_backward
from mtmm_plugins.weightings.db_mtl import DualBalancing
from mtmm_plugins.weightings.graddrop import GradientSignDropout
from mtmm_plugins.weightings.imtl_full import ImpartialMultitask

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    seed = secrets.randbits(62)
    print(f"random inputs from seed {seed}")
    return torch.Generator().manual_seed(seed)


def names(count: int) -> list[str]:
    return [f"task{i}" for i in range(count)]


def randint(gen: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def spread(gen: torch.Generator, count: int, ratio: float = 1e3) -> torch.Tensor:
    """``count`` positive float64 scales whose largest is exactly ``ratio`` times the smallest."""
    exponents = torch.rand(count, generator=gen, dtype=F64)
    order = torch.randperm(count, generator=gen)
    exponents[order[0]], exponents[order[-1]] = 0.0, 1.0
    return ratio**exponents


def gradients(gen: torch.Generator, count: int, size: int, ratio: float = 1e3) -> torch.Tensor:
    """float32 ``[count, size]`` with row norms spread over ``ratio``."""
    rows = torch.randn(count, size, generator=gen, dtype=F64)
    rows = rows / rows.norm(dim=1, keepdim=True) * spread(gen, count, ratio).unsqueeze(1)
    return rows.float()


def positive_losses(gen: torch.Generator, count: int) -> torch.Tensor:
    return (spread(gen, count) * 1e-2).float()  # 0.01 .. 10


# ----------------------------------------------------------------------------------------------
# GradDrop (Chen et al. 2020)


def graddrop_reference(grads: torch.Tensor, uniform: torch.Tensor, leak: torch.Tensor,
                       f=lambda p: p) -> torch.Tensor:
    """Eq. 1-2 of the paper in float64: purity, sign masks from one uniform draw, leaky sum."""
    g = grads.to(F64)
    absolute = g.abs().sum(0)
    purity = 0.5 * (1 + g.sum(0) / torch.where(absolute > 0, absolute, 1.0))
    keep = f(purity)
    masks = ((keep > uniform) & (g > 0)) | ((keep < uniform) & (g < 0))
    leak = leak.to(F64).unsqueeze(1)
    return ((leak + (1 - leak) * masks.to(F64)) * g).sum(0)


@pytest.mark.parametrize("trial", range(4))
def test_graddrop_matches_the_papers_rule_under_one_seed(gen, trial):
    t, p = randint(gen, 2, 10), randint(gen, 7, 1000)
    grads = gradients(gen, t, p)
    grads[:, : p // 10] *= (torch.rand(t, p // 10, generator=gen) < 0.3)  # some exact zeros, some all-zero columns
    grads[:, 0] = 0.0
    leak = torch.rand(t, generator=gen, dtype=F64) if trial % 2 else torch.zeros(t, dtype=F64)
    f = (lambda q: 0.5 + 0.5 * torch.tanh(4 * (q - 0.5)) / math.tanh(2.0)) if trial == 3 else (lambda q: q)
    weighting = GradientSignDropout(tasks=names(t), leak=leak.tolist(), f=f if trial == 3 else None)
    seed = secrets.randbits(62)
    torch.manual_seed(seed)
    combined = weighting.combine(grads, positive_losses(gen, t))
    torch.manual_seed(seed)
    uniform = torch.rand(p, dtype=grads.dtype).to(F64)  # the draw the rule makes: U ~ U(0, 1) per coordinate
    expected = graddrop_reference(grads, uniform, leak, f)
    scale = grads.abs().max().item()
    torch.testing.assert_close(combined.to(F64), expected, rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(weighting.weights(), torch.ones(t))
    assert combined.dtype == grads.dtype and combined.shape == (p,)


def test_graddrop_keeps_every_component_where_the_signs_agree():
    grads = torch.tensor([[1.0, -2.0, 0.0, 5.0], [3.0, -1.0, 0.0, 0.0], [0.5, -4.0, 0.0, 1e-3]])
    weighting = GradientSignDropout(tasks=names(3))
    for seed in range(20):
        torch.manual_seed(seed)
        torch.testing.assert_close(weighting.combine(grads, torch.ones(3)), grads.sum(0))


def test_graddrop_picks_one_side_of_exactly_opposed_components():
    size = 4000
    grads = torch.stack([torch.full((size,), 2.0), torch.full((size,), -2.0)])  # purity 1/2 everywhere
    grads[:, 1::2] *= -0.5  # (-1, +1) on the odd coordinates
    weighting = GradientSignDropout(tasks=names(2))
    torch.manual_seed(7)
    combined = weighting.combine(grads, torch.ones(2))
    torch.manual_seed(7)
    positive_side = 0.5 > torch.rand(size)  # f(P) = 1/2 > U: the positive component survives
    expected = torch.where(positive_side, grads.clamp_min(0).sum(0), grads.clamp_max(0).sum(0))
    torch.testing.assert_close(combined, expected)
    assert set(combined.abs().unique().tolist()) <= {1.0, 2.0}
    assert abs(positive_side.float().mean().item() - 0.5) < 0.05


def test_graddrop_ties_keep_neither_sign(monkeypatch):
    """The paper's inequalities are strict: where f(P) = U nothing survives (leak aside)."""
    grads = torch.tensor([[2.0, -1.0, 3.0], [-2.0, -1.0, 1.0]])  # purity 1/2, 0, 1
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.tensor([0.5, 0.0, 0.999]))
    combined = GradientSignDropout(tasks=names(2)).combine(grads, torch.ones(2))
    torch.testing.assert_close(combined, torch.tensor([0.0, 0.0, 4.0]))


def test_graddrop_with_full_leak_is_the_plain_sum(gen):
    grads = gradients(gen, 3, 50)
    weighting = GradientSignDropout(tasks=names(3), leak={"task0": 1.0, "task1": 1.0, "task2": 1.0})
    torch.testing.assert_close(weighting.combine(grads, torch.ones(3)), grads.sum(0), rtol=1e-6, atol=1e-6)
    partial = GradientSignDropout(tasks=names(3), leak={"task1": 1.0})  # task1 passes through, others dropped
    torch.manual_seed(3)
    combined = partial.combine(grads, torch.ones(3))
    torch.manual_seed(3)
    expected = graddrop_reference(grads, torch.rand(50).to(F64), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(combined.to(F64), expected, rtol=1e-5, atol=1e-6 * grads.abs().max().item())


def test_graddrop_absent_task_is_left_out(gen):
    t, p = 3, randint(gen, 7, 1000)
    grads = gradients(gen, t, p)
    grads[1] = float("nan")  # an absent task's gradient is not even looked at
    present = torch.tensor([True, False, True])
    three, two = GradientSignDropout(tasks=names(3)), GradientSignDropout(tasks=["task0", "task2"])
    torch.manual_seed(11)
    with_absent = three.combine(grads, torch.ones(3), present)
    torch.manual_seed(11)
    alone = two.combine(grads[[0, 2]], torch.ones(2))
    assert torch.equal(with_absent, alone)
    torch.testing.assert_close(three.weights(), torch.tensor([1.0, 0.0, 1.0]))


def test_graddrop_nan_gradient_raises_naming_the_task_and_draws_nothing(gen):
    grads = gradients(gen, 3, 20)
    grads[2, 5] = float("nan")
    weighting = GradientSignDropout(tasks=["depth", "seg", "normal"])
    rng = torch.get_rng_state()
    with pytest.raises(NonFiniteError, match="graddrop.*'normal'"):
        weighting.combine(grads, torch.ones(3))
    assert torch.equal(torch.get_rng_state(), rng)


def test_graddrop_parameters_are_checked():
    with pytest.raises(ValueError, match="leak of task 'task1' must be in \\[0, 1\\]"):
        GradientSignDropout(tasks=names(2), leak=[0.0, 1.5])
    with pytest.raises(ValueError, match="leak has 3 entries but there are 2 tasks"):
        GradientSignDropout(tasks=names(2), leak=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="leak names unknown tasks nope"):
        GradientSignDropout(tasks=names(2), leak={"nope": 0.5})
    with pytest.raises(ValueError, match="f must be a callable"):
        GradientSignDropout(tasks=names(2), f=0.5)
    with pytest.raises(ValueError, match="gradient_mode must be one of"):
        GradientSignDropout(tasks=names(2), gradient_mode="sideways")


# ----------------------------------------------------------------------------------------------
# IMTL (Liu et al. 2021): IMTL-L's scales and IMTL-G's weights of the scaled gradients


def with_scales(weighting: ImpartialMultitask, s: torch.Tensor) -> ImpartialMultitask:
    with torch.no_grad():
        weighting.loss_scales.copy_(s)
    return weighting


def imtl_g_reference(scaled: torch.Tensor) -> torch.Tensor:
    """Eq. 7 in float64: alpha_{2:t} = h_1 U^T (D U^T)^{-1}, D_i = h_1 - h_i, U_i = u_1 - u_i; alpha_1 = 1 - sum."""
    h = scaled.to(F64)
    u = h / h.norm(dim=1, keepdim=True)
    d_rows, u_rows = h[:1] - h[1:], u[:1] - u[1:]
    rest = torch.linalg.solve((d_rows @ u_rows.T).T, (h[0] @ u_rows.T))  # x (D U^T) = h_1 U^T
    return torch.cat([1 - rest.sum().reshape(1), rest])


def check_equal_projections(combined: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor,
                            rows: torch.Tensor | None = None) -> None:
    """IMTL-G's defining property: combined . u_i is the same for every (non-zero) task gradient."""
    g = grads.to(F64) if rows is None else grads.to(F64)[rows]
    projections = (g / g.norm(dim=1, keepdim=True)) @ combined.to(F64)
    magnitude = (weights.to(F64).abs() * grads.to(F64).norm(dim=1)).sum()
    assert (projections - projections.mean()).abs().max() <= 1e-4 * magnitude, projections


@pytest.mark.parametrize("trial", range(4))
def test_imtl_scale_gradient_and_equal_projections(gen, trial):
    t = randint(gen, 2, 10)
    p = randint(gen, max(7, t), 1000)
    grads, losses = gradients(gen, t, p), positive_losses(gen, t)
    s = 2 * torch.rand(t, generator=gen) - 1
    weighting = with_scales(ImpartialMultitask(tasks=names(t)), s)
    combined = weighting.combine(grads, losses)
    # IMTL-L: d/ds (e^s L - s) = e^s L - 1
    torch.testing.assert_close(weighting.loss_scales.grad.to(F64), s.to(F64).exp() * losses.to(F64) - 1,
                               rtol=1e-6, atol=1e-6)
    # IMTL-G on the scaled gradients h_i = e^{s_i} g_i
    scaled = s.to(F64).exp().unsqueeze(1) * grads.to(F64)
    alpha = imtl_g_reference(scaled)
    expected = alpha @ scaled
    weights = weighting.weights()
    magnitude = (alpha.abs() * scaled.norm(dim=1)).sum()
    assert (combined.to(F64) - expected).abs().max() <= 1e-4 * magnitude
    torch.testing.assert_close(combined, weights @ grads, rtol=1e-4, atol=1e-5 * magnitude.item())
    assert abs((weights.to(F64) / s.to(F64).exp()).sum().item() - 1) < 1e-4  # alpha sums to 1
    check_equal_projections(combined, grads, weights)


def test_imtl_leaves_a_zero_gradient_out(gen):
    t, p = randint(gen, 3, 10), randint(gen, 10, 1000)
    grads, losses = gradients(gen, t, p), positive_losses(gen, t)
    zero = randint(gen, 0, t - 1)
    grads[zero] = 0.0
    s = 2 * torch.rand(t, generator=gen) - 1
    weighting = with_scales(ImpartialMultitask(tasks=names(t)), s)
    combined = weighting.combine(grads, losses)
    weights = weighting.weights()
    assert weights[zero] == 0 and combined.norm() > 0
    others = torch.tensor([i for i in range(t) if i != zero])
    check_equal_projections(combined, grads, weights, others)
    scaled = s.to(F64).exp().unsqueeze(1) * grads.to(F64)
    alpha = imtl_g_reference(scaled[others])
    magnitude = (alpha.abs() * scaled[others].norm(dim=1)).sum()
    assert (combined.to(F64) - alpha @ scaled[others]).abs().max() <= 1e-4 * magnitude
    # the task is present: its scale still learns
    torch.testing.assert_close(weighting.loss_scales.grad[zero], s[zero].exp() * losses[zero] - 1)


def test_imtl_with_dependent_float32_gradients(gen):
    # parallel copies with norms 1e3 apart: equal projections are still attainable exactly
    base = gradients(gen, 3, randint(gen, 7, 1000))
    grads = torch.cat([base, 1e3 * base[:1], 1e-3 * base[1:2]])  # rows 3, 4 parallel to rows 0, 1
    s = 2 * torch.rand(5, generator=gen) - 1
    weighting = with_scales(ImpartialMultitask(tasks=names(5)), s)
    combined = weighting.combine(grads, positive_losses(gen, 5))
    assert torch.isfinite(combined).all() and combined.norm() > 0
    check_equal_projections(combined, grads, weighting.weights())
    # more tasks than coordinates (rank 7 < 10): the projections are the least-squares best,
    # c times the orthogonal projection of the all-ones vector onto the span of the projections.
    # (c can be negative: alpha sums to 1 as in the paper, and 1/c is a signed sum.)
    grads = gradients(gen, 10, 7)
    weighting = with_scales(ImpartialMultitask(tasks=names(10)), 2 * torch.rand(10, generator=gen) - 1)
    combined = weighting.combine(grads, positive_losses(gen, 10)).to(F64)
    units = grads.to(F64) / grads.to(F64).norm(dim=1, keepdim=True)
    basis = torch.linalg.svd(units, full_matrices=False).U  # [10, 7]: the span of u_i . x over x
    target = basis @ (basis.T @ torch.ones(10, dtype=F64))
    projections = units @ combined
    c = (projections @ target) / (target @ target)
    assert c != 0
    assert (projections - c * target).abs().max() <= 1e-4 * projections.abs().max()


def test_imtl_absent_task_takes_no_part_and_its_scale_gets_no_gradient(gen):
    p = randint(gen, 7, 1000)
    grads, losses = gradients(gen, 3, p), positive_losses(gen, 3)
    grads[1] = float("nan")
    s = 2 * torch.rand(3, generator=gen) - 1
    three = with_scales(ImpartialMultitask(tasks=names(3)), s)
    two = with_scales(ImpartialMultitask(tasks=["task0", "task2"]), s[[0, 2]])
    present = torch.tensor([True, False, True])
    combined = three.combine(grads, losses, present)
    torch.testing.assert_close(combined, two.combine(grads[[0, 2]], losses[[0, 2]]), rtol=1e-6, atol=1e-7)
    weights = three.weights()
    assert weights[1] == 0
    torch.testing.assert_close(weights[[0, 2]], two.weights())
    assert three.loss_scales.grad[1] == 0
    torch.testing.assert_close(three.loss_scales.grad[[0, 2]], two.loss_scales.grad)
    torch.testing.assert_close(three.loss_scales.detach(), s)  # combine never steps s itself
    value = three(losses, present)
    expected = sum(math.exp(s[i]) * losses[i].item() - s[i].item() for i in (0, 2))
    assert abs(value.item() - expected) < 1e-5 * (1 + abs(expected)) and not value.requires_grad


def test_imtl_nan_gradient_raises_and_changes_nothing(gen):
    grads, losses = gradients(gen, 3, 30), positive_losses(gen, 3)
    grads[0, 3] = float("inf")
    weighting = ImpartialMultitask(tasks=["depth", "seg", "normal"], init=0.25)
    with pytest.raises(NonFiniteError, match="'depth'"):
        weighting.combine(grads, losses)
    assert weighting.loss_scales.grad is None
    torch.testing.assert_close(weighting.loss_scales.detach(), torch.full((3,), 0.25))
    with pytest.raises(NonFiniteError, match="loss of task 'seg'"):
        weighting.combine(gradients(gen, 3, 30), torch.tensor([1.0, float("nan"), 1.0]))
    assert weighting.loss_scales.grad is None


def test_imtl_scale_gradients_accumulate_and_parameters_are_checked(gen):
    grads, losses = gradients(gen, 2, 9), positive_losses(gen, 2)
    weighting = ImpartialMultitask(tasks=names(2))
    weighting.combine(grads, losses)
    weighting.combine(grads, losses)
    torch.testing.assert_close(weighting.loss_scales.grad, 2 * (losses - 1))
    with pytest.raises(ValueError, match="imtl init .* must be finite"):
        ImpartialMultitask(tasks=names(2), init=float("inf"))


# ----------------------------------------------------------------------------------------------
# DB-MTL (Lin et al. 2023)


class DualBalancingReference:
    """Algorithm 1 in float64: EMA of grad log(L + eps) from zeros (per-task step counts), max-norm scaling."""

    def __init__(self, count: int, size: int, beta: float, beta_sigma: float, eps: float = 1e-8):
        self.ema = torch.zeros(count, size, dtype=F64)
        self.steps = [0] * count
        self.beta, self.beta_sigma, self.eps = beta, beta_sigma, eps

    def step(self, grads: torch.Tensor, losses: torch.Tensor, present: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        for i in present:
            self.steps[i] += 1
            beta = self.beta / self.steps[i] ** self.beta_sigma
            log_grad = grads[i].to(F64) / (losses[i].item() + self.eps)
            self.ema[i] = beta * self.ema[i] + (1 - beta) * log_grad
        norms = {i: self.ema[i].norm().item() for i in present}
        largest = max(norms.values())
        alpha = torch.zeros(len(self.steps), dtype=F64)
        for i in present:
            alpha[i] = largest / norms[i] if norms[i] > 0 else 0.0
        return alpha @ self.ema, alpha


def test_db_mtl_matches_a_float64_transcription_over_three_steps(gen):
    t, p = randint(gen, 2, 10), randint(gen, 7, 1000)
    beta = 0.5 + 0.45 * torch.rand((), generator=gen).item()
    beta_sigma = [0.0, 0.5][randint(gen, 0, 1)]
    weighting = DualBalancing(tasks=names(t), beta=beta, beta_sigma=beta_sigma)
    reference = DualBalancingReference(t, p, beta, beta_sigma)
    for step in range(3):
        grads, losses = gradients(gen, t, p), positive_losses(gen, t)
        if step == 1:
            grads[randint(gen, 0, t - 1)] = 0.0  # a zero gradient: that task's average only decays
        combined = weighting.combine(grads, losses)
        expected, alpha = reference.step(grads, losses, list(range(t)))
        scale = (alpha * reference.ema.norm(dim=1)).sum().item()
        assert (combined.to(F64) - expected).abs().max() <= 1e-5 * scale, step
        torch.testing.assert_close(weighting.weights().to(F64), alpha, rtol=1e-5, atol=0)
        torch.testing.assert_close(weighting.ema.to(F64), reference.ema, rtol=1e-5,
                                   atol=1e-6 * reference.ema.abs().max().item())
    assert weighting.ema_steps.tolist() == [3] * t


def test_db_mtl_first_step_is_not_bias_corrected():
    grads = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    weighting = DualBalancing(tasks=names(2), beta=0.9)
    combined = weighting.combine(grads, torch.tensor([1.0, 1.0]))
    # ghat = 0.1 g: norms 0.5 and 0.05, so alpha = (1, 10) and the combined is 0.1 (g_0 + 10 g_1)
    torch.testing.assert_close(combined, torch.tensor([0.3, 0.9]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(weighting.weights(), torch.tensor([1.0, 10.0]))


def test_db_mtl_absent_task_keeps_its_state_and_takes_no_part(gen):
    p = randint(gen, 7, 1000)
    present = torch.tensor([True, False, True])
    # from fresh state: the same as the model with only the present tasks
    three, two = DualBalancing(tasks=names(3), beta=0.9), DualBalancing(tasks=["task0", "task2"], beta=0.9)
    grads, losses = gradients(gen, 3, p), positive_losses(gen, 3)
    grads[1] = float("nan")
    torch.testing.assert_close(three.combine(grads, losses, present), two.combine(grads[[0, 2]], losses[[0, 2]]),
                               rtol=0, atol=0)
    torch.testing.assert_close(three.ema[[0, 2]], two.ema, rtol=0, atol=0)
    assert three.ema[1].abs().max() == 0 and three.ema_steps.tolist() == [1, 0, 1]
    assert three.weights()[1] == 0
    torch.testing.assert_close(three.weights()[[0, 2]], two.weights())
    # over several steps with per-task step counts (beta_sigma > 0), against the transcription
    weighting = DualBalancing(tasks=names(3), beta=0.8, beta_sigma=0.5)
    reference = DualBalancingReference(3, p, 0.8, 0.5)
    for mask in ([True, True, True], [True, False, True], [False, True, True]):
        grads, losses = gradients(gen, 3, p), positive_losses(gen, 3)
        before = weighting.ema.clone()
        combined = weighting.combine(grads, losses, torch.tensor(mask))
        expected, alpha = reference.step(grads, losses, [i for i in range(3) if mask[i]])
        scale = (alpha * reference.ema.norm(dim=1)).sum().item()
        assert (combined.to(F64) - expected).abs().max() <= 1e-5 * scale
        for i in range(3):
            if not mask[i]:
                assert torch.equal(weighting.ema[i], before[i]) and weighting.weights()[i] == 0
    assert weighting.ema_steps.tolist() == reference.steps == [2, 2, 3]


def test_db_mtl_nan_gradient_raises_and_changes_nothing(gen):
    weighting = DualBalancing(tasks=["depth", "seg", "normal"], beta=0.9)
    weighting.combine(gradients(gen, 3, 40), positive_losses(gen, 3))
    ema, steps = weighting.ema.clone(), weighting.ema_steps.clone()
    grads = gradients(gen, 3, 40)
    grads[1, 7] = float("nan")
    with pytest.raises(NonFiniteError, match="gradient of task 'seg'"):
        weighting.combine(grads, positive_losses(gen, 3))
    with pytest.raises(ValueError, match="loss of task 'normal' is <= -eps"):
        weighting.combine(gradients(gen, 3, 40), torch.tensor([1.0, 1.0, -0.5]))
    assert torch.equal(weighting.ema, ema) and torch.equal(weighting.ema_steps, steps)


def test_db_mtl_state_survives_a_checkpoint(gen, tmp_path):
    t, p = randint(gen, 2, 10), randint(gen, 7, 1000)
    weighting = DualBalancing(tasks=names(t), beta=0.7, beta_sigma=0.5)
    assert weighting.state_dict()["ema"].shape == (t, 0)
    present = torch.ones(t, dtype=torch.bool)
    present[0] = False
    weighting.combine(gradients(gen, t, p), positive_losses(gen, t))
    weighting.combine(gradients(gen, t, p), positive_losses(gen, t), present)
    save_checkpoint({"weighting": weighting.state_dict()}, tmp_path / "last.pt")
    fresh = DualBalancing(tasks=names(t), beta=0.7, beta_sigma=0.5)
    fresh.load_state_dict(load_checkpoint(tmp_path / "last.pt")["weighting"])
    assert torch.equal(fresh.ema, weighting.ema) and torch.equal(fresh.ema_steps, weighting.ema_steps)
    grads, losses = gradients(gen, t, p), positive_losses(gen, t)
    assert torch.equal(fresh.combine(grads, losses), weighting.combine(grads, losses))
    # loading into one that has seen gradients of another size, and an unused state into a used one
    other = DualBalancing(tasks=names(t), beta=0.7, beta_sigma=0.5)
    other.combine(gradients(gen, t, p + 3), positive_losses(gen, t))
    other.load_state_dict(weighting.state_dict())
    assert torch.equal(other.ema, weighting.ema)
    other.load_state_dict(DualBalancing(tasks=names(t)).state_dict())
    assert other.ema.shape == (t, 0) and other.ema_steps.sum() == 0
    with pytest.raises(RuntimeError, match="size mismatch"):
        DualBalancing(tasks=names(t + 1)).load_state_dict(weighting.state_dict())


def test_db_mtl_restarts_its_averages_when_the_gradient_size_changes(gen):
    weighting = DualBalancing(tasks=names(2), beta=0.9)
    weighting.combine(gradients(gen, 2, 12), positive_losses(gen, 2))
    grads, losses = gradients(gen, 2, 8), positive_losses(gen, 2)
    with pytest.warns(RuntimeWarning, match="restarting the averages"):
        combined = weighting.combine(grads, losses)
    torch.testing.assert_close(combined, DualBalancing(tasks=names(2), beta=0.9).combine(grads, losses))
    assert weighting.ema_steps.tolist() == [1, 1]


def test_db_mtl_parameters_are_checked():
    for kwargs, message in [({"beta": 1.0}, "beta .* must be in \\[0, 1\\)"),
                            ({"beta": -0.1}, "beta .* must be in \\[0, 1\\)"),
                            ({"beta_sigma": -1.0}, "beta_sigma .* must be finite and >= 0"),
                            ({"eps": 0.0}, "eps .* must be finite and > 0")]:
        with pytest.raises(ValueError, match=message):
            DualBalancing(tasks=names(2), **kwargs)


# ----------------------------------------------------------------------------------------------
# Through weighted_backward on a representation


@pytest.mark.parametrize("factory", [GradientSignDropout, ImpartialMultitask, DualBalancing])
def test_the_combination_is_what_reaches_the_representation(gen, factory):
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    heads = torch.randn(3, 6, generator=gen)
    representation = x * 1.0

    def task_losses() -> torch.Tensor:
        return torch.stack([((representation @ heads[i]) - i).pow(2).mean() for i in range(3)])

    weighting = factory(tasks=names(3))
    losses = task_losses()
    grads = torch.stack([torch.autograd.grad(loss, representation, retain_graph=True)[0].flatten() for loss in losses])
    reference = factory(tasks=names(3))
    torch.manual_seed(5)
    expected = reference.combine(grads, losses.detach())
    torch.manual_seed(5)
    weighted_backward(weighting, losses, representation)
    torch.testing.assert_close(x.grad.flatten(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighting.weights(), reference.weights())


def test_db_mtl_defaults_to_no_average_over_representation_batches(gen):
    """beta defaults to 0 in representation mode: ghat_i = g_i / (L_i + eps), nothing kept between steps."""
    t, p = randint(gen, 2, 10), randint(gen, 7, 1000)
    grads, losses = gradients(gen, t, p), positive_losses(gen, t)
    weighting = DualBalancing(tasks=names(t))
    assert weighting.beta == 0 and DualBalancing(tasks=names(t), gradient_mode="parameters").beta == 0.9
    log_grads = grads.to(F64) / (losses.to(F64) + 1e-8).unsqueeze(1)
    norms = log_grads.norm(dim=1)
    expected = (norms.max() / norms).unsqueeze(1).mul(log_grads).sum(0)
    combined = weighting.combine(grads, losses)
    assert (combined.to(F64) - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert weighting.ema.numel() == 0
