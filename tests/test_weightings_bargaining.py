"""Nash-MTL, FairGrad and GradVac against float64 references written here, on fresh random gradients.

The references use no project code: a damped Newton solve of ``G w = w^(-p)`` and the
paper's per-vector GradVac loop on the ``P``-dimensional gradients. Every random case draws
a new seed, printed in the failure message.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from mtmm_core.errors import NonFiniteError
from mtmm_plugins.weightings.fairgrad import FairGradient
from mtmm_plugins.weightings.gradvac import GradientVaccine
from mtmm_plugins.weightings.nash_mtl import NashBargaining

# (factory, power p in G w = w^(-p))
BARGAINING = [
    pytest.param(lambda tasks, **kw: NashBargaining(tasks=tasks, **kw), 1.0, id="nash_mtl"),
    pytest.param(lambda tasks, **kw: FairGradient(tasks=tasks, alpha=1.0, **kw), 1.0, id="fairgrad-1"),
    pytest.param(lambda tasks, **kw: FairGradient(tasks=tasks, alpha=0.5, **kw), 2.0, id="fairgrad-0.5"),
    pytest.param(lambda tasks, **kw: FairGradient(tasks=tasks, alpha=3.0, **kw), 1 / 3, id="fairgrad-3"),
]


def names(count: int) -> list[str]:
    return [f"task{i}" for i in range(count)]


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def random_gradients(gen: torch.Generator, count: int, size: int, *, ratio: float = 1e3,
                     dependent: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[count, size]`` Gaussian gradients with norms spread over ``[1, ratio]`` (the extremes included);
    ``dependent``: the third row is the sum of the first two, formed in ``dtype``."""
    grads = torch.randn(count, size, generator=gen, dtype=torch.float64)
    grads = grads / grads.norm(dim=1, keepdim=True)
    exponents = torch.rand(count, generator=gen, dtype=torch.float64)
    exponents[0], exponents[-1] = 0.0, 1.0
    grads = (grads * ratio ** exponents.unsqueeze(1)).to(dtype)
    if dependent and count >= 3:
        grads[2] = grads[0] + grads[1]
    return grads


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


# ----------------------------------------------------------------------------- references


def reference_power_weights(gram: torch.Tensor, power: float) -> torch.Tensor:
    """``w > 0`` with ``G w = w^(-p)``, float64: Newton's method on the equation from the orthogonal-gradient
    solution ``G_ii^(-1/(1+p))``, each step halved until ``w`` stays positive and the residual falls."""
    gram = gram.double()

    def residual(w: torch.Tensor) -> float:  # relative to the size of the terms
        return float(((gram @ w - w ** (-power)).abs() / (gram.abs() @ w + w ** (-power))).max())

    w = gram.diagonal() ** (-1 / (1 + power))
    for _ in range(100):
        current = residual(w)
        if current < 1e-14:
            break
        jacobian = gram + torch.diag(power * w ** (-power - 1))
        step = -torch.linalg.solve(jacobian, gram @ w - w ** (-power))
        t = 1.0
        while t > 1e-10 and (bool((w + t * step <= 0).any()) or residual(w + t * step) >= (1 - 1e-4 * t) * current):
            t /= 2
        if t <= 1e-10:
            break
        w = w + t * step
    return w


def defining_residual(gram: torch.Tensor, w: torch.Tensor, power: float) -> float:
    """``max_i |(G w)_i - w_i^(-p)| / w_i^(-p)``."""
    rhs = w ** (-power)
    return float(((gram @ w - rhs).abs() / rhs).max())


def reference_gradvac_step(grads: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """One GradVac step on the vectors themselves (float64), the paper's Algorithm 1; updates ``targets``
    ``[t, t]`` in place. The order of the others for task ``i``: ``torch.randperm(t - 1)`` over them."""
    g = grads.double()
    count = g.shape[0]
    corrected = g.clone()
    for i in range(count):
        others = [j for j in range(count) if j != i]
        for j in [others[k] for k in torch.randperm(count - 1).tolist()]:
            gi, gj = corrected[i], g[j]
            norm_i, norm_j = float(gi.norm()), float(gj.norm())
            if norm_i == 0.0 or norm_j == 0.0:
                continue
            phi = min(max(float(gi @ gj) / (norm_i * norm_j), -1.0), 1.0)
            hat = float(targets[i, j])
            if phi < hat < 1.0:
                scale = norm_i * (hat * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - hat**2))
                corrected[i] = gi + scale / (norm_j * math.sqrt(1 - hat**2)) * gj
            targets[i, j] = (1 - beta) * hat + beta * phi
    return corrected.sum(dim=0)


# ----------------------------------------------------------------------------- Nash-MTL and FairGrad


@pytest.mark.parametrize("make, power", BARGAINING)
def test_orthogonal_gradients_hand_case(make, power):
    # G = diag(a^2, b^2): a^2 w_1 = w_1^(-p), so w_i = |g_i|^(-2 / (1 + p))
    a, b = 3.0, 0.25
    grads = torch.tensor([[a, 0.0, 0.0], [0.0, b, 0.0]], dtype=torch.float64)
    weighting = make(names(2))
    combined = weighting.combine(grads, torch.ones(2))
    expected_w = torch.tensor([a ** (-2 / (1 + power)), b ** (-2 / (1 + power))], dtype=torch.float64)
    torch.testing.assert_close(combined, expected_w @ grads, rtol=1e-12, atol=0)
    torch.testing.assert_close(weighting.weights(), expected_w.float(), rtol=1e-6, atol=0)
    if power == 1.0:  # Nash: g_i . d = 1 / w_i, so |d|^2 = w^T G w = t
        assert abs(float(combined.norm()) - math.sqrt(2)) < 1e-12


@pytest.mark.parametrize("make, power", BARGAINING)
def test_weights_solve_the_defining_equation_on_random_gramians(make, power):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    for case in range(8):
        count = int(torch.randint(2, 11, (), generator=gen))
        size = int(torch.randint(max(7, count), 1001, (), generator=gen))
        grads = random_gradients(gen, count, size, dependent=case % 3 == 0)
        gram = grads @ grads.T
        weighting = make(names(count))
        w = torch.from_numpy(weighting.weights_from_gramian(gram.numpy(), torch.float64))
        message = f"seed {seed}, case {case}, t={count}, P={size}"
        assert bool((w > 0).all()), message
        assert defining_residual(gram, w, power) < 1e-8, message
        expected = reference_power_weights(gram, power) @ grads
        combined = weighting.combine(grads, torch.ones(count))
        assert relative(combined, expected) < 1e-6, message
        torch.testing.assert_close(weighting.weights().double(), w, rtol=1e-6, atol=0, msg=message)


@pytest.mark.parametrize("make, power", BARGAINING)
def test_float32_gradients_match_the_float64_reference(make, power):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    for case in range(8):
        count = int(torch.randint(3, 11, (), generator=gen))
        size = int(torch.randint(max(7, count), 1001, (), generator=gen))
        grads = random_gradients(gen, count, size, dependent=case % 2 == 0, dtype=torch.float32)
        reference = grads.double()
        expected = reference_power_weights(reference @ reference.T, power) @ reference
        combined = make(names(count)).combine(grads, torch.ones(count))
        assert combined.dtype == torch.float32
        assert relative(combined, expected) < 1e-6, f"seed {seed}, case {case}, t={count}, P={size}"


@pytest.mark.parametrize("make, power", BARGAINING)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_zero_gradient_is_left_out_of_the_bargaining(make, power, dtype):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    grads = random_gradients(gen, 4, 50, dtype=dtype)
    grads[1] = 0.0
    weighting, rest = make(names(4)), make(names(3))
    combined = weighting.combine(grads, torch.ones(4))
    assert float(weighting.weights()[1]) == 0.0
    keep = [0, 2, 3]
    expected = rest.combine(grads[keep], torch.ones(3))
    assert relative(combined, expected) < 1e-6, f"seed {seed}"
    # float32: the Gramians of 4 and of 3 rows round differently, and FairGrad's weights amplify that
    rtol = 1e-5 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(weighting.weights()[keep], rest.weights(), rtol=rtol, atol=0, msg=f"seed {seed}")
    assert torch.isfinite(combined).all()


@pytest.mark.parametrize("make, power", BARGAINING)
def test_opposed_gradients_get_an_update_orthogonal_to_both(make, power):
    # g_2 = -g_1: no update improves both; the limit of the equation's near-solutions is the
    # third task's bargain on its gradient projected off g_1: d = h |h|^(-2/(1+p)), h = g_3 - (g_3.u) u.
    g1 = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    g3 = torch.tensor([1.0, 0.5, -2.0, 0.0], dtype=torch.float64)
    grads = torch.stack([g1, -g1, g3])
    h = g3 - (g3 @ g1) / (g1 @ g1) * g1
    expected = h * h.norm() ** (-2 / (1 + power))
    weighting = make(names(3))
    combined = weighting.combine(grads, torch.ones(3))
    torch.testing.assert_close(combined, expected, rtol=1e-10, atol=1e-12)
    assert abs(float(combined @ g1)) < 1e-12
    alone = make(names(2)).combine(grads[:2], torch.ones(2))
    assert float(alone.abs().max()) == 0.0


@pytest.mark.parametrize("make, power", BARGAINING)
def test_max_norm_clips_the_update(make, power):
    grads = torch.tensor([[3.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    free = make(names(2)).combine(grads, torch.ones(2))
    clipped = make(names(2), max_norm=0.5)
    result = clipped.combine(grads, torch.ones(2))
    torch.testing.assert_close(result, free * (0.5 / free.norm()), rtol=1e-12, atol=0)
    loose = make(names(2), max_norm=float(free.norm()) * 2).combine(grads, torch.ones(2))
    torch.testing.assert_close(loose, free, rtol=1e-12, atol=0)


def test_nash_update_every_reuses_the_weights_until_the_present_tasks_change():
    gen = torch.Generator().manual_seed(fresh_seed())
    first, second, third = (random_gradients(gen, 3, 20) for _ in range(3))
    weighting = NashBargaining(tasks=names(3), update_every=2)
    weighting.combine(first, torch.ones(3))
    solved = weighting.weights().clone()
    reused = weighting.combine(second, torch.ones(3))  # step 1: reuse
    torch.testing.assert_close(weighting.weights(), solved)
    expected = solved.double() @ second  # weights() is float32: elements that cancel carry its rounding
    torch.testing.assert_close(reused, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
    weighting.combine(third, torch.ones(3))  # step 2: solve again
    fresh = NashBargaining(tasks=names(3))
    fresh.combine(third, torch.ones(3))
    torch.testing.assert_close(weighting.weights(), fresh.weights())
    # step 3 would reuse, but task 1 is absent now: solved again on tasks 0 and 2
    weighting.combine(first, torch.ones(3), torch.tensor([True, False, True]))
    pair = NashBargaining(tasks=names(2))
    pair.combine(first[[0, 2]], torch.ones(2))
    torch.testing.assert_close(weighting.weights()[[0, 2]], pair.weights())
    assert int(weighting.state_dict()["steps"]) == 4


# ----------------------------------------------------------------------------- GradVac


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_gradvac_matches_the_per_vector_loop_over_several_steps(dtype, tolerance):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    for case in range(6):
        count = int(torch.randint(2, 11, (), generator=gen))
        size = int(torch.randint(max(7, count), 1001, (), generator=gen))
        beta = [0.5, 0.01, 1.0, 0.3, 0.5, 0.0][case]
        weighting = GradientVaccine(tasks=names(count), beta=beta)
        targets = torch.zeros(count, count, dtype=torch.float64)
        base = random_gradients(gen, count, size, dependent=case == 4, dtype=dtype)
        for step in range(5):
            # a shared drift keeps the cosines correlated across steps, so the targets matter
            noise = random_gradients(gen, count, size, ratio=1.0, dtype=dtype) * base.norm(dim=1, keepdim=True)
            grads = base + 0.7 * noise
            if case == 5 and step >= 2:
                grads[count // 2] = 0.0
            order_seed = int(torch.randint(2**31, (), generator=gen))
            with torch.random.fork_rng():
                torch.manual_seed(order_seed)
                combined = weighting.combine(grads, torch.ones(count))
                torch.manual_seed(order_seed)
                expected = reference_gradvac_step(grads, targets, beta)
            message = f"seed {seed}, case {case}, step {step}, t={count}, P={size}, beta={beta}"
            assert relative(combined, expected) < tolerance, message
            torch.testing.assert_close(weighting.target_cosines, targets, rtol=0, atol=tolerance, msg=message)
            weights = weighting.weights().double()
            assert relative(weights @ grads.double(), expected) < max(tolerance, 1e-6), message


def test_gradvac_hand_case_first_step_is_pcgrad_then_targets_move():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    weighting = GradientVaccine(tasks=names(2), beta=0.5)
    combined = weighting.combine(grads, torch.ones(2))
    # targets 0: each gradient loses its component along the other, as PCGrad: (0.5, 0.5) + (0, 1)
    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5], dtype=torch.float64))
    c = -1 / math.sqrt(2)  # cos(g_1, g_2), measured before each correction
    expected = torch.tensor([[0.0, c / 2], [c / 2, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(weighting.target_cosines, expected)
    weighting.combine(grads, torch.ones(2))
    # second step: cos(g_i, g_j) = c is measured again (before the correction to the target c / 2): 3c / 4
    torch.testing.assert_close(weighting.target_cosines, expected * 1.5)


def test_gradvac_zero_gradient_takes_no_part():
    grads = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    weighting = GradientVaccine(tasks=names(3))
    weighting.target_cosines.fill_(0.3)
    weighting.target_cosines.fill_diagonal_(0.0)
    combined = weighting.combine(grads, torch.ones(3))
    assert torch.isfinite(combined).all()
    unchanged = torch.tensor([0.3, 0.0, 0.3], dtype=torch.float64)
    assert torch.equal(weighting.target_cosines[1, :], unchanged)
    assert torch.equal(weighting.target_cosines[:, 1], unchanged)
    assert float(weighting.target_cosines[0, 2]) != 0.3


# ----------------------------------------------------------------------------- absent tasks, NaN, state


ALL = [
    pytest.param(lambda tasks: NashBargaining(tasks=tasks), id="nash_mtl"),
    pytest.param(lambda tasks: FairGradient(tasks=tasks, alpha=2.0), id="fairgrad"),
    pytest.param(lambda tasks: GradientVaccine(tasks=tasks), id="gradvac"),
]


@pytest.mark.parametrize("make", ALL)
def test_absent_task_takes_no_part(make):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    grads = random_gradients(gen, 3, 40, dtype=torch.float32)
    grads[1] = float("nan")  # an absent task's gradient is not looked at
    weighting, pair = make(names(3)), make(names(2))
    if isinstance(weighting, GradientVaccine):
        start = torch.rand(3, 3, generator=gen, dtype=torch.float64) - 0.5
        weighting.target_cosines.copy_(start)
        pair.target_cosines.copy_(start[[0, 2]][:, [0, 2]])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        combined = weighting.combine(grads, torch.ones(3), torch.tensor([True, False, True]))
        torch.manual_seed(seed)
        expected = pair.combine(grads[[0, 2]], torch.ones(2))
    assert relative(combined, expected) < 1e-6, f"seed {seed}"
    assert float(weighting.weights()[1]) == 0.0
    torch.testing.assert_close(weighting.weights()[[0, 2]], pair.weights())
    if isinstance(weighting, GradientVaccine):
        after = weighting.target_cosines
        assert torch.equal(after[1], start[1]) and torch.equal(after[:, 1], start[:, 1])
        torch.testing.assert_close(after[[0, 2]][:, [0, 2]], pair.target_cosines, rtol=0, atol=0)


@pytest.mark.parametrize("make", ALL)
def test_nan_gradient_raises_naming_the_task_and_leaves_the_state(make):
    grads = torch.randn(3, 10)
    weighting = make(["depth", "segment", "normal"])
    weighting.combine(grads, torch.ones(3))
    before = {k: v.clone() for k, v in weighting.state_dict().items()}
    bad = grads.clone()
    bad[2, 4] = float("nan")
    with pytest.raises(NonFiniteError, match="'normal'"):
        weighting.combine(bad, torch.ones(3))
    after = weighting.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_gradvac_targets_survive_a_checkpoint():
    grads = torch.randn(3, 12)
    weighting = GradientVaccine(tasks=names(3))
    weighting.combine(grads, torch.ones(3))
    restored = GradientVaccine(tasks=names(3))
    restored.load_state_dict(weighting.state_dict())
    assert torch.equal(restored.target_cosines, weighting.target_cosines)
    assert bool((weighting.target_cosines != 0).any())


@pytest.mark.parametrize("factory, params, word", [
    (NashBargaining, {"max_norm": -1.0}, "max_norm"),
    (NashBargaining, {"update_every": 0}, "update_every"),
    (FairGradient, {"alpha": 0.0}, "alpha"),
    (FairGradient, {"alpha": float("inf")}, "alpha"),
    (FairGradient, {"max_norm": float("nan")}, "max_norm"),
    (GradientVaccine, {"beta": 1.5}, "beta"),
    (GradientVaccine, {"beta": -0.1}, "beta"),
])
def test_invalid_parameters_are_refused(factory, params, word):
    with pytest.raises(ValueError, match=word):
        factory(tasks=names(2), **params)


@pytest.mark.parametrize("make, power", BARGAINING)
def test_a_deadlocked_group_is_left_unchanged_and_the_others_bargain(make, power):
    # g_3 = -(g_1 + 2 g_2): tasks 1-3 cancel, no update improves all three. The update must be
    # orthogonal to their gradients and solve the equation for the other tasks: g_i . d = w_i^(-p).
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    grads = random_gradients(gen, 6, 30)
    grads[:3, 20:] = 0.0  # the group lives in the first 20 coordinates, the others reach all 30
    grads[2] = -(grads[0] + 2 * grads[1])
    combined = make(names(6)).combine(grads, torch.ones(6))
    w = torch.from_numpy(make(names(6)).weights_from_gramian((grads @ grads.T).numpy(), torch.float64))
    assert torch.isfinite(combined).all()
    group, rest = grads[:3], grads[3:]
    cosines = (group @ combined) / (group.norm(dim=1) * combined.norm())
    assert float(cosines.abs().max()) < 1e-9, f"seed {seed}"
    improvement = rest @ combined
    torch.testing.assert_close(improvement, w[3:] ** (-power), rtol=1e-6, atol=0, msg=f"seed {seed}")
    assert relative(w @ grads, combined) < 1e-9, f"seed {seed}"
