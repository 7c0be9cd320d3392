"""UPGrad, DualProj and ConFIG against references written here from the papers, in float64.

Nothing here calls the project's solvers. The projection onto the dual cone
``{x : J x >= 0}`` is found by enumerating active sets in the primal: for every set ``A`` of
gradients, the projection of ``y`` onto the subspace ``{x : g_a . x = 0, a in A}``; the
projection onto the cone is the feasible one nearest to ``y`` (it is one of them: the
subspace of its own active set). ConFIG is the paper's formula with NumPy's ``pinv`` of the
unit gradients. Inputs are fresh random numbers every run.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtmm_core.errors import NonFiniteError
from mtmm_plugins.weightings.conflict_free import ConflictFreeGradient
from mtmm_plugins.weightings.dualproj import DualProjection
from mtmm_plugins.weightings.upgrad import UnconflictingProjection

rng = np.random.default_rng()  # fresh inputs every run
METHODS = [UnconflictingProjection, DualProjection, ConflictFreeGradient]


def tasks(count: int) -> list[str]:
    return [f"t{i}" for i in range(count)]


def random_gradients(count: int, size: int, *, ratio: float = 1.0, dependent: bool = False,
                     zero: bool = False, dtype=torch.float64) -> torch.Tensor:
    """``[count, size]`` gradients whose norms span ``ratio``; optionally the last = first + second, or one zero.

    A shared component makes most pairs agree and some conflict, so that some projections
    are active and some not.
    """
    grads = rng.standard_normal((count, size)) + rng.uniform(0.0, 1.0) * rng.standard_normal(size)
    norms = rng.permuted(np.logspace(0, -math.log10(ratio), count))
    grads = grads / np.linalg.norm(grads, axis=1, keepdims=True) * norms[:, None]
    grads = torch.tensor(grads, dtype=dtype)
    if dependent:  # in the given dtype: g3 = g1 + g2 up to its rounding
        grads[-1] = grads[0] + grads[1]
    if zero:
        grads[rng.integers(count)] = 0.0
    return grads


def assert_close_update(got: torch.Tensor, expected: np.ndarray, grads: torch.Tensor, rel: float = 1e-6) -> None:
    """``|got - expected| <= rel |expected| + 1e-9 max_i |g_i|``.

    The second term only matters when the update is ~0 (the dual cone is ``{0}`` when the
    gradients positively span their space): ``sum_i w_i g_i`` then cancels, and its rounding
    alone is ``eps sum_i |w_i| |g_i|``, far above ``1e-6 * 1e-9 max_i |g_i|``.
    """
    scale = float(np.linalg.norm(grads.double().numpy(), axis=1).max())
    error = float(np.linalg.norm(got.double().numpy() - expected))
    assert error <= rel * float(np.linalg.norm(expected)) + 1e-9 * scale, (error, np.linalg.norm(expected))


def assert_weights_give_the_update(weighting, combined: torch.Tensor, grads: torch.Tensor) -> None:
    """``weights() @ J`` is the update, up to the rounding of the float32 ``weights()``."""
    J, w = grads.double().numpy(), weighting.weights().double().numpy()
    error = float(np.linalg.norm(w @ J - combined.double().numpy()))
    assert error <= 1e-6 * float(np.abs(w) @ np.linalg.norm(J, axis=1)) + 1e-12, error


def assert_in_the_dual_cone(combined: torch.Tensor, grads: torch.Tensor) -> None:
    """No task's gradient has a negative dot product with the update (Quinton and Rey 2024, Prop. 1)."""
    J, x = grads.double().numpy(), combined.double().numpy()
    norms = np.linalg.norm(J, axis=1)
    assert (J @ x >= -(1e-6 * np.linalg.norm(x) + 1e-9 * norms.max()) * norms).all()


# ---- references ---------------------------------------------------------------------------------

def project_onto_dual_cone(J: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rows ``[m, P]``: each row ``y`` of ``targets`` projected onto ``{x : J x >= 0}`` (``J`` ``[T, P]``).

    Everything happens in the span of ``J``'s rows (an orthonormal basis from a QR
    decomposition), where the targets lie and hence their projections. For each active set
    ``A``: ``x_A = y - Q_A Q_A^T y`` (``Q_A`` an orthonormal basis of the span of ``{g_a}``); among
    the ``x_A`` with ``J x_A >= 0`` the nearest to ``y`` is the projection.
    """
    basis, _ = np.linalg.qr(J.T)  # [P, r]
    rows, ys = J @ basis, targets @ basis  # coordinates in the row space
    norms = np.linalg.norm(rows, axis=1)
    units = rows / np.where(norms > 0, norms, 1.0)[:, None]
    count = len(rows)
    best = [(math.inf, None)] * len(ys)
    for size in range(count + 1):
        for active in itertools.combinations(range(count), size):
            if size:
                u, s, _ = np.linalg.svd(units[list(active)].T, full_matrices=False)
                span = u[:, s > 1e-12 * s.max()]
                candidates = ys - (ys @ span) @ span.T
            else:
                candidates = ys.copy()
            for k, (y, x) in enumerate(zip(ys, candidates)):
                slack = 1e-10 * np.linalg.norm(x) + 1e-13 * np.linalg.norm(y)  # rounding, also of x = 0
                if (units @ x >= -slack).all():
                    distance = float(np.linalg.norm(x - y))
                    if distance < best[k][0]:
                        best[k] = (distance, x)
    return np.stack([x for _, x in best]) @ basis.T


def upgrad_reference(J: np.ndarray, preferences: np.ndarray | None = None) -> np.ndarray:
    """Quinton and Rey 2024: ``sum_i p_i pi_J(g_i)``, ``p = 1/T`` by default (the mean of the projections)."""
    p = np.full(len(J), 1.0 / len(J)) if preferences is None else preferences
    return p @ project_onto_dual_cone(J, J)


def dualproj_reference(J: np.ndarray, preferences: np.ndarray | None = None) -> np.ndarray:
    """Quinton and Rey 2024: ``pi_J(sum_i p_i g_i)``, ``p = 1/T`` by default (the projection of the mean)."""
    p = np.full(len(J), 1.0 / len(J)) if preferences is None else preferences
    return project_onto_dual_cone(J, (p @ J)[None, :])[0]


def config_reference(J: np.ndarray, rcond: float = 1e-10) -> np.ndarray:
    """Liu et al. 2025, eq. 2: ``g_u = unit(pinv([u_1 .. u_T]^T) 1)``, update ``(sum_i g_i . g_u) g_u``."""
    norms = np.linalg.norm(J, axis=1)
    units = J[norms > 0] / norms[norms > 0][:, None]
    direction = np.linalg.pinv(units, rcond=rcond) @ np.ones(len(units))
    unit = direction / np.linalg.norm(direction)
    return (J @ unit).sum() * unit


# ---- closed forms on hand-made cases ------------------------------------------------------------

def test_two_conflicting_gradients_in_2d_by_hand():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # g1 . g2 = -1
    # dual cone: x1 >= 0 and x2 >= x1. g1 leaves it through x2 >= x1: onto that line, (1/2, 1/2) = g1 + g2/2.
    # g2 leaves it through x1 >= 0: onto the x2 axis, (0, 1) = g1 + g2. UPGrad: the mean, (1/4, 3/4).
    upgrad = UnconflictingProjection(tasks=["a", "b"])
    torch.testing.assert_close(upgrad.combine(grads, torch.ones(2)), torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(upgrad.weights(), torch.tensor([1.0, 0.75]))  # ((1 + 1) / 2, (1/2 + 1) / 2)
    # DualProj: the mean (0, 1/2) is already in the cone; with g2 = (-2, 1) the mean (-1/2, 1/2) is not,
    # and goes onto the x2 axis: (0, 1/2) = g1 + g2 / 2, still with g2 . x = 1/2 >= 0.
    dualproj = DualProjection(tasks=["a", "b"])
    torch.testing.assert_close(dualproj.combine(grads, torch.ones(2)), torch.tensor([0.0, 0.5], dtype=torch.float64))
    steep = torch.tensor([[1.0, 0.0], [-2.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(dualproj.combine(steep, torch.ones(2)), torch.tensor([0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(dualproj.weights(), torch.tensor([1.0, 0.5]))
    # ConFIG: u1 = (1, 0), u2 = (-1, 1)/sqrt 2; equal cosines: a = (b - a)/sqrt 2, so g_u ~ (1, 1 + sqrt 2);
    # length g1 . g_u + g2 . g_u = b.
    a, b = 1 / math.sqrt(1 + (1 + math.sqrt(2)) ** 2), (1 + math.sqrt(2)) / math.sqrt(1 + (1 + math.sqrt(2)) ** 2)
    config = ConflictFreeGradient(tasks=["a", "b"])
    torch.testing.assert_close(config.combine(grads, torch.ones(2)), torch.tensor([b * a, b * b], dtype=torch.float64))


@pytest.mark.parametrize("count", [2, 5])
def test_orthogonal_gradients(count):
    """Orthogonal gradients conflict with nothing: UPGrad and DualProj give the mean; ConFIG gives
    ``g_u = sum_i u_i / sqrt T``, length ``sum_i |g_i| / sqrt T``."""
    norms = 10.0 ** rng.uniform(-3, 3, count)
    basis, _ = np.linalg.qr(rng.standard_normal((40, count)))
    grads = torch.tensor(basis.T * norms[:, None])
    mean = grads.numpy().mean(axis=0)
    assert_close_update(UnconflictingProjection(tasks=tasks(count)).combine(grads, torch.ones(count)), mean, grads)
    assert_close_update(DualProjection(tasks=tasks(count)).combine(grads, torch.ones(count)), mean, grads)
    expected = norms.sum() / count * basis.sum(axis=1)
    assert_close_update(ConflictFreeGradient(tasks=tasks(count)).combine(grads, torch.ones(count)), expected, grads)


def test_identical_gradients():
    """UPGrad and DualProj of T copies of g give g; ConFIG gives T g (the sum of the projections)."""
    g = torch.tensor(rng.standard_normal(9))
    grads = g.repeat(4, 1)
    for method, factor in [(UnconflictingProjection, 1.0), (DualProjection, 1.0), (ConflictFreeGradient, 4.0)]:
        combined = method(tasks=tasks(4)).combine(grads, torch.ones(4))
        assert_close_update(combined, factor * g.numpy(), grads)


# ---- random cases against the references --------------------------------------------------------

CASES = [  # (tasks, size, norm ratio, dependent, zero, dtype)
    (2, 7, 1.0, False, False, torch.float64), (3, 50, 1e3, False, False, torch.float64),
    (4, 1000, 1e4, False, False, torch.float64), (3, 300, 1e3, False, False, torch.float32),
    (3, 200, 1.0, True, False, torch.float32), (4, 9, 1e3, True, False, torch.float32),
    (5, 9, 1e3, True, False, torch.float64), (6, 12, 1e4, False, True, torch.float64),
    (8, 40, 1e3, False, False, torch.float64), (10, 7, 1.0, False, False, torch.float64),
    (10, 1000, 1e2, True, True, torch.float64), (5, 100, 1e4, False, False, torch.float32),
    (4, 60, 1e4, True, False, torch.float32),
]


@pytest.mark.parametrize("count, size, ratio, dependent, zero, dtype", CASES)
def test_upgrad_and_dualproj_match_the_enumerated_projection(count, size, ratio, dependent, zero, dtype):
    grads = random_gradients(count, size, ratio=ratio, dependent=dependent, zero=zero, dtype=dtype)
    J = grads.double().numpy()
    upgrad, dualproj = UnconflictingProjection(tasks=tasks(count)), DualProjection(tasks=tasks(count))
    for method, reference in [(upgrad, upgrad_reference(J)), (dualproj, dualproj_reference(J))]:
        combined = method.combine(grads, torch.ones(count))
        assert_close_update(combined, reference, grads)
        assert_in_the_dual_cone(combined, grads)
        assert_weights_give_the_update(method, combined, grads)


@pytest.mark.parametrize("count, size, ratio, dependent, zero, dtype", CASES)
def test_config_matches_the_papers_formula(count, size, ratio, dependent, zero, dtype):
    grads = random_gradients(count, size, ratio=ratio, dependent=dependent, zero=zero, dtype=dtype)
    J = grads.double().numpy()
    # float32's rounding of g1 + g2 is not a direction (singular value ~1e-7 of the largest)
    reference = config_reference(J, rcond=1e-10 if dtype == torch.float64 else 1e-5)
    config = ConflictFreeGradient(tasks=tasks(count))
    combined = config.combine(grads, torch.ones(count))
    assert_close_update(combined, reference, grads)
    assert_weights_give_the_update(config, combined, grads)


@pytest.mark.parametrize("count, size, ratio", [(2, 7, 1.0), (3, 100, 1e3), (6, 50, 1e4), (9, 1000, 1e2)])
def test_config_has_equal_cosines_with_every_gradient(count, size, ratio):
    """With independent gradients, every unit gradient has the same dot product with the update."""
    grads = random_gradients(count, size, ratio=ratio)
    combined = ConflictFreeGradient(tasks=tasks(count)).combine(grads, torch.ones(count)).numpy()
    J = grads.numpy()
    cosines = J @ combined / (np.linalg.norm(J, axis=1) * np.linalg.norm(combined))
    assert cosines.min() > 0
    assert np.abs(cosines - cosines.mean()).max() <= 1e-9


def test_preferences_weight_the_projections():
    grads = random_gradients(4, 30, ratio=1e3)
    J = grads.numpy()
    p = rng.uniform(0.1, 2.0, 4)
    combined = UnconflictingProjection(tasks=tasks(4), preferences=list(p)).combine(grads, torch.ones(4))
    assert_close_update(combined, upgrad_reference(J, p), grads)
    by_name = DualProjection(tasks=tasks(4), preferences=dict(zip(tasks(4), p))).combine(grads, torch.ones(4))
    assert_close_update(by_name, dualproj_reference(J, p), grads)
    config = ConflictFreeGradient(tasks=tasks(4), preferences=list(p)).combine(grads, torch.ones(4)).numpy()
    cosines = J @ config / (np.linalg.norm(J, axis=1) * np.linalg.norm(config))
    assert np.abs(cosines / p - (cosines / p).mean()).max() <= 1e-9 * (cosines / p).mean()  # cosines ~ p


# ---- zero gradient, absent tasks, non-finite gradients, parameters ------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_a_zero_gradient_is_left_out(method):
    grads = random_gradients(4, 30, ratio=1e3, zero=True, dtype=torch.float32)
    zero = int((grads.norm(dim=1) == 0).nonzero())
    keep = [i for i in range(4) if i != zero]
    weighting = method(tasks=tasks(4))
    combined = weighting.combine(grads, torch.ones(4))
    assert torch.isfinite(combined).all() and torch.isfinite(weighting.weights()).all()
    assert weighting.weights()[zero] == 0
    if method is ConflictFreeGradient:  # the zero gradient is not in U, and adds 0 to the length
        assert_close_update(combined, config_reference(grads[keep].double().numpy(), rcond=1e-5), grads)
    for zeros in (torch.zeros(3, 8), torch.zeros(1, 8)):
        everything_zero = method(tasks=tasks(len(zeros)))
        assert (everything_zero.combine(zeros, torch.ones(len(zeros))) == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_an_absent_task_takes_no_part(method):
    grads = random_gradients(3, 20, ratio=1e3, dtype=torch.float32)
    weighting = method(tasks=["a", "b", "c"])
    combined = weighting.combine(grads, torch.ones(3), torch.tensor([True, False, True]))
    weights = weighting.weights()
    alone = method(tasks=["a", "c"])
    torch.testing.assert_close(combined, alone.combine(grads[[0, 2]], torch.ones(2)))
    assert weights[1] == 0
    torch.testing.assert_close(weights[[0, 2]], alone.weights())
    # an absent task's gradient is not looked at, even when it is NaN
    grads[1] = float("nan")
    torch.testing.assert_close(weighting.combine(grads, torch.ones(3), torch.tensor([True, False, True])), combined)


@pytest.mark.parametrize("method", METHODS)
def test_an_absent_task_keeps_its_preference_out(method):
    grads = random_gradients(3, 20)
    p = [0.5, 3.0, 1.5]
    weighting = method(tasks=["a", "b", "c"], preferences=p)
    alone = method(tasks=["a", "c"], preferences=[p[0], p[2]])
    torch.testing.assert_close(weighting.combine(grads, torch.ones(3), torch.tensor([True, False, True])),
                               alone.combine(grads[[0, 2]], torch.ones(2)))


@pytest.mark.parametrize("method", METHODS)
def test_a_nan_gradient_of_a_present_task_is_refused_by_name(method):
    grads = random_gradients(3, 10, dtype=torch.float32)
    grads[2, 4] = float("nan")
    weighting = method(tasks=["depth", "labels", "caption"])
    with pytest.raises(NonFiniteError, match="caption"):
        weighting.combine(grads, torch.ones(3))
    with pytest.raises(NonFiniteError, match=weighting.method):
        weighting.combine(grads, torch.ones(3))


@pytest.mark.parametrize("method", METHODS)
def test_invalid_preferences_are_refused(method):
    for bad, message in [([1.0, 2.0], "one value per task"), ([1.0, -1.0, 1.0], "finite and >= 0"),
                         ([1.0, float("nan"), 1.0], "finite and >= 0"), ([0.0, 0.0, 0.0], "at least one"),
                         ({"a": 1.0, "b": 1.0}, "missing: c"), ({"a": 1, "b": 1, "c": 1, "d": 1}, "unknown: d"),
                         ("1 1 1", "list")]:
        with pytest.raises(ValueError, match=message):
            method(tasks=["a", "b", "c"], preferences=bad)
    with pytest.raises(ValueError, match="gradient_mode"):
        method(tasks=["a", "b", "c"], gradient_mode="weights")
