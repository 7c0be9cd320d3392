"""The original gradient-level weightings against references written here from the papers, in float64.

Nothing here calls the project's solvers: the min-norm point is found by enumerating
supports, CAGrad is certified by strong duality with its primal problem, IMTL-G by the
paper's own closed form, Aligned-MTL by an eigen-decomposition of a float64 Gramian, PCGrad by
a transcription of the paper's per-vector loop. Inputs are fresh random numbers every run.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtmm_plugins.weightings import (
    AlignedMultitask,
    ConflictAverseGradient,
    GradNormWeighting,
    ImpartialGradientWeighting,
    MultipleGradientDescent,
    ProjectingConflictingGradients,
)

rng = np.random.default_rng()  # fresh inputs every run


def tasks(count: int) -> list[str]:
    return [f"t{i}" for i in range(count)]


def random_gradients(count: int, size: int, *, ratio: float = 1.0, dependent: bool = False,
                     zero: bool = False, dtype=torch.float32) -> torch.Tensor:
    """``[count, size]`` gradients whose norms span ``ratio``; optionally the last = first + second, or zero."""
    grads = rng.standard_normal((count, size)) * np.logspace(0, -math.log10(ratio), count)[:, None]
    grads = rng.permuted(grads, axis=0) if ratio > 1 else grads
    if dependent:
        grads[-1] = grads[0] + grads[1]
    if zero:
        grads[rng.integers(count)] = 0.0
    return torch.tensor(grads, dtype=dtype)


def assert_close_update(got: torch.Tensor, expected: np.ndarray, grads: torch.Tensor, rel: float = 1e-6) -> None:
    """``|got - expected| <= rel |expected| + 1e-9 max_i |g_i|`` (the second term only matters near 0)."""
    scale = float(np.linalg.norm(grads.double().numpy(), axis=1).max())
    error = float(np.linalg.norm(got.double().numpy() - expected))
    assert error <= rel * float(np.linalg.norm(expected)) + 1e-9 * scale, (error, np.linalg.norm(expected))


CASES = [  # (tasks, size, norm ratio, dependent, zero)
    (2, 7, 1.0, False, False), (3, 50, 1e3, False, False), (3, 1000, 1e4, False, False),
    (4, 300, 10.0, True, False), (5, 9, 1e3, True, False), (6, 7, 1.0, False, True),
    (8, 40, 1e3, False, False), (10, 7, 1.0, False, False), (7, 1000, 1e2, True, True),
]


# ---- MGDA: the min-norm point of the convex hull, by enumerating supports -----------------------

def min_norm_point_by_enumeration(grads: np.ndarray) -> np.ndarray:
    """The min-norm point of conv{g_i}: on each support, the affine min-norm point if it is convex."""
    gram = grads @ grads.T
    count = len(gram)
    best, best_value = None, math.inf
    for size in range(1, count + 1):
        for support in itertools.combinations(range(count), size):
            index = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = gram[np.ix_(index, index)]
            kkt[:size, size] = kkt[size, :size] = 1.0
            solution = np.linalg.lstsq(kkt, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
            if (solution < -1e-12).any():
                continue
            point = solution @ grads[index]
            value = float(point @ point)
            if value < best_value:
                best, best_value = point, value
    return best


@pytest.mark.parametrize("count, size, ratio, dependent, zero", [case for case in CASES if case[0] <= 8])
def test_mgda_reaches_the_min_norm_point(count, size, ratio, dependent, zero):
    """Enumeration is 2^T: up to 8 tasks here; the 20-task test certifies larger cases."""
    grads = random_gradients(count, size, ratio=ratio, dependent=dependent, zero=zero)
    combined = MultipleGradientDescent(tasks=tasks(count)).combine(grads, torch.ones(count))
    assert_close_update(combined, min_norm_point_by_enumeration(grads.double().numpy()), grads)


def test_mgda_issue_case_with_norms_1e3_1_1e_2():
    grads = torch.tensor(rng.standard_normal((3, 100)))
    grads = (grads / grads.norm(dim=1, keepdim=True) * torch.tensor([[1e3], [1.0], [1e-2]])).float()
    combined = MultipleGradientDescent(tasks=tasks(3)).combine(grads, torch.ones(3))
    assert_close_update(combined, min_norm_point_by_enumeration(grads.double().numpy()), grads)


@pytest.mark.parametrize("ratio", [1.0, 1e4])
def test_mgda_with_20_tasks_meets_the_optimality_certificate(ratio):
    grads = random_gradients(20, 30, ratio=ratio, dtype=torch.float64)
    mgda = MultipleGradientDescent(tasks=tasks(20))
    combined = mgda.combine(grads, torch.ones(20)).numpy()
    alpha = mgda.weights().double().numpy()
    assert alpha.min() >= 0 and abs(alpha.sum() - 1) < 1e-6  # weights() is float32
    # min-norm point p of conv{g_i}: g_i . p >= |p|^2 for every i, equality on the support
    g = grads.numpy()
    margins = g @ combined - combined @ combined
    scale = np.linalg.norm(g, axis=1) * np.linalg.norm(combined)
    assert (margins >= -1e-7 * scale).all()
    assert (np.abs(margins[alpha > 1e-6]) <= 1e-7 * scale[alpha > 1e-6]).all()


# ---- CAGrad: optimal iff the primal value min_i g_i . d equals the dual value F(w) ----------------

@pytest.mark.parametrize("count, size, ratio, dependent", [case[:4] for case in CASES if not case[4]]
                         + [(20, 12, 1e4, False), (10, 7, 1e3, False)])
@pytest.mark.parametrize("c", [0.4, 0.9])
def test_cagrad_closes_the_duality_gap(count, size, ratio, dependent, c):
    """CAGrad's primal: max_d min_i g_i . d over |d - g0| <= c |g0|; its dual: min_w g_w . g0 + c |g0| |g_w|.

    Any feasible ``d`` and any ``w`` on the simplex satisfy primal(d) <= dual(w); equality
    certifies that both are optimal (Liu et al. 2021, eq. 5-7).
    """
    grads = random_gradients(count, size, ratio=ratio, dependent=dependent, dtype=torch.float64)
    cagrad = ConflictAverseGradient(tasks=tasks(count), c=c)
    combined = cagrad.combine(grads, torch.ones(count)).numpy()
    g = grads.numpy()
    g0 = g.mean(axis=0)
    d = combined * (1 + c)  # mtmm divides the update by 1 + c
    w = cagrad.simplex_weights(grads @ grads.T)
    g_w = w @ g
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-9)  # feasible
    primal = float((g @ d).min())
    dual = float(g_w @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(g_w))
    scale = float(np.linalg.norm(g, axis=1).max() * np.linalg.norm(g0))
    assert abs(primal - dual) <= 1e-6 * abs(dual) + 1e-9 * scale, (primal, dual)


def test_cagrad_with_a_zero_gradient_stays_finite_and_feasible():
    grads = random_gradients(4, 30, ratio=1e3, zero=True, dtype=torch.float64)
    combined = ConflictAverseGradient(tasks=tasks(4), c=0.5).combine(grads, torch.ones(4)).numpy()
    g0 = grads.numpy().mean(axis=0)
    assert np.isfinite(combined).all()
    assert np.linalg.norm(combined * 1.5 - g0) <= 0.5 * np.linalg.norm(g0) * (1 + 1e-9)


def test_cagrad_with_c_zero_is_the_mean():
    grads = random_gradients(4, 9)
    torch.testing.assert_close(ConflictAverseGradient(tasks=tasks(4), c=0.0).combine(grads, torch.ones(4)),
                               grads.mean(0))


# ---- IMTL-G: the paper's closed form alpha_{2:T} = g_1 U^T (D U^T)^{-1} -------------------------

def imtl_g_paper(grads: np.ndarray) -> np.ndarray:
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    differences, unit_differences = grads[:1] - grads[1:], units[:1] - units[1:]
    rest = grads[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
    return np.r_[1 - rest.sum(), rest] @ grads


@pytest.mark.parametrize("count, size, ratio", [(2, 7, 1.0), (3, 50, 1e3), (5, 200, 1e3), (10, 1000, 1e2)])
def test_imtl_g_matches_the_papers_closed_form(count, size, ratio):
    grads = random_gradients(count, size, ratio=ratio)
    combined = ImpartialGradientWeighting(tasks=tasks(count)).combine(grads, torch.ones(count))
    assert_close_update(combined, imtl_g_paper(grads.double().numpy()), grads, rel=1e-5)


def test_imtl_g_leaves_a_zero_gradient_out_instead_of_zeroing_the_update():
    imtl = ImpartialGradientWeighting(tasks=tasks(3))
    combined = imtl.combine(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.ones(3))
    torch.testing.assert_close(combined, torch.tensor([0.5, 0.5, 0.0]))
    grads = random_gradients(4, 60, ratio=1e3, zero=True)
    zero = int((grads.norm(dim=1) == 0).nonzero())
    keep = [i for i in range(4) if i != zero]
    combined = ImpartialGradientWeighting(tasks=tasks(4)).combine(grads, torch.ones(4))
    assert_close_update(combined, imtl_g_paper(grads[keep].double().numpy()), grads, rel=1e-5)


def test_imtl_g_with_dependent_float32_gradients_agrees_with_float64():
    """g3 = g1 + g2 in float32: the rank is judged at float32's precision, so the answer is float64's."""
    grads = random_gradients(3, 500, dependent=True)
    imtl = ImpartialGradientWeighting(tasks=tasks(3))
    single, double = imtl.combine(grads, torch.ones(3)), imtl.combine(grads.double(), torch.ones(3))
    assert_close_update(single, double.numpy(), grads, rel=1e-4)


# ---- Aligned-MTL: the paper's Algorithm 1 on a float64 Gramian ----------------------------------

def aligned_mtl_paper(grads: np.ndarray, rank: int) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh(grads @ grads.T)
    eigenvalues, vectors = eigenvalues[-rank:], vectors[:, -rank:]
    balance = math.sqrt(eigenvalues.min()) * (vectors / np.sqrt(eigenvalues)) @ vectors.T
    return balance.sum(axis=1) @ grads


@pytest.mark.parametrize("count, size, ratio, dependent", [
    (2, 1000, 1.0, False), (3, 1000, 1.0, True), (4, 50, 1e3, False), (5, 300, 1e2, True), (6, 3, 1.0, False)])
def test_aligned_mtl_matches_algorithm_1_in_float64(count, size, ratio, dependent):
    grads = random_gradients(count, size, ratio=ratio, dependent=dependent)
    rank = min(count - int(dependent), size)
    combined = AlignedMultitask(tasks=tasks(count)).combine(grads, torch.ones(count))
    assert_close_update(combined, aligned_mtl_paper(grads.double().numpy(), rank), grads, rel=1e-4)


def test_aligned_mtl_issue_case_does_not_collapse_in_float32():
    g = torch.randn(2, 1000)
    g = torch.cat([g, g[:1] + g[1:]])
    aligned = AlignedMultitask(tasks=tasks(3))
    single, double = aligned.combine(g, torch.ones(3)), aligned.combine(g.double(), torch.ones(3))
    assert abs(float(single.norm()) / float(double.norm()) - 1) < 1e-5


# ---- PCGrad: the paper's loop over actual vectors ----------------------------------------------

def pcgrad_paper(grads: np.ndarray, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    projected = grads.copy()
    for i in range(len(grads)):
        for j in torch.randperm(len(grads)).tolist():
            if j != i and projected[i] @ grads[j] < 0:
                projected[i] -= projected[i] @ grads[j] / (grads[j] @ grads[j]) * grads[j]
    return projected.sum(axis=0)


@pytest.mark.parametrize("count, size, ratio, dependent, zero", CASES)
def test_pcgrad_matches_the_papers_loop(count, size, ratio, dependent, zero):
    grads = random_gradients(count, size, ratio=ratio, dependent=dependent, zero=zero)
    seed = int(rng.integers(1 << 30))
    torch.manual_seed(seed)
    combined = ProjectingConflictingGradients(tasks=tasks(count)).combine(grads, torch.ones(count))
    assert_close_update(combined, pcgrad_paper(grads.double().numpy(), seed), grads, rel=1e-5)


# ---- GradNorm: L(0) is each task's first loss when present --------------------------------------

def test_gradnorm_takes_l0_when_a_task_is_first_present():
    gradnorm = GradNormWeighting(tasks=tasks(3), alpha=1.5)
    optimizer = torch.optim.SGD(gradnorm.parameters(), lr=0.01)
    grads = torch.eye(3)
    for step in range(200):
        present = torch.tensor([True, step > 0, step > 0])  # tasks 1 and 2 have no label in the first batch
        optimizer.zero_grad()
        gradnorm.combine(grads, torch.ones(3), present)
        optimizer.step()
    torch.testing.assert_close(gradnorm.initial_losses, torch.ones(3))
    # equal losses, equal gradient norms, equal rates: the weights must stay equal
    torch.testing.assert_close(gradnorm.weights(), torch.ones(3), atol=1e-4, rtol=0)
