"""One rule for every weighting: a task with no labelled sample in the batch takes no part in the step.

The step with tasks ``S`` present must be the step the same method takes on a model that
had only the tasks ``S``. And a NaN or infinite loss or gradient of a present task is an
error naming the task and the method, raised before any state changes.
"""

from __future__ import annotations

import pytest
import torch

from mtmm_core import build_model
from mtmm_core.errors import NonFiniteError
from mtmm_plugins.weightings import BUILTIN_WEIGHTINGS
from mtmm_core.weighting_bases import GradientWeighting

ALL, KEPT = ["t0", "t1", "t2"], ["t0", "t2"]
PRESENT = torch.tensor([True, False, True])
GRADIENT_LEVEL = sorted(name for name, f in BUILTIN_WEIGHTINGS.items() if getattr(f, "gradient_level", False))
LOSS_LEVEL = sorted(name for name, f in BUILTIN_WEIGHTINGS.items() if not getattr(f, "gradient_level", False))
RANDOM_DRAWS = {"rlw"}  # draws T numbers whatever is present: tested on its own below


def make(name: str, tasks: list[str]):
    params = {"weights": [0.5 + i for i in range(len(tasks))]} if name == "static" else {}
    if name == "static" and tasks == KEPT:
        params = {"weights": [0.5, 2.5]}
    return BUILTIN_WEIGHTINGS[name](tasks=tasks, **params)


def random_losses() -> torch.Tensor:
    return torch.rand(3) * 2 + 0.1


@pytest.mark.parametrize("name", [n for n in LOSS_LEVEL if n not in RANDOM_DRAWS])
def test_a_loss_level_step_without_a_task_is_the_step_of_a_model_without_it(name):
    full, kept = make(name, ALL), make(name, KEPT)
    losses = random_losses().requires_grad_()
    total = full(losses, present=PRESENT)
    total.backward()
    kept_losses = losses.detach()[[0, 2]].clone().requires_grad_()
    expected = kept(kept_losses)
    expected.backward()
    torch.testing.assert_close(total, expected)
    assert losses.grad[1] == 0
    torch.testing.assert_close(losses.grad[[0, 2]], kept_losses.grad)
    for parameter in full.parameters():
        if parameter.grad is not None:
            assert parameter.grad[1] == 0, f"{name}: the absent task's parameter got a gradient"


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_rlw_draws_weights_over_the_present_tasks_only(distribution):
    rlw = BUILTIN_WEIGHTINGS["rlw"](tasks=ALL, distribution=distribution)
    for _ in range(20):
        rlw(random_losses(), present=PRESENT)
        weights = rlw.weights()
        assert weights[1] == 0 and abs(float(weights.sum()) - 1) < 1e-6 and (weights >= 0).all()


@pytest.mark.parametrize("name", GRADIENT_LEVEL)
def test_a_gradient_level_step_without_a_task_is_the_step_of_a_model_without_it(name):
    full, kept = make(name, ALL), make(name, KEPT)
    grads, losses = torch.randn(3, 40), random_losses()
    grads[1] = float("nan")  # an absent task's gradient is never looked at
    seed = int(torch.randint(1 << 30, ()))
    torch.manual_seed(seed)
    combined = full.combine(grads, losses, present=PRESENT)
    torch.manual_seed(seed)
    expected = kept.combine(grads[[0, 2]], losses[[0, 2]])
    torch.testing.assert_close(combined, expected, rtol=1e-5, atol=1e-6)
    if type(full).weights is GradientWeighting.weights:  # weights() = the last combination
        assert full.weights()[1] == 0
    for parameter in full.parameters():
        if parameter.grad is not None:
            assert parameter.grad[1] == 0, f"{name}: the absent task's parameter got a gradient"


@pytest.mark.parametrize("name", GRADIENT_LEVEL)
def test_no_task_present_gives_a_zero_update(name):
    combined = make(name, ALL).combine(torch.randn(3, 8), random_losses(), present=torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(combined, torch.zeros(8))


def state_of(weighting) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in weighting.state_dict().items()}
    state.update({f"{k}.grad": p.grad.clone() for k, p in weighting.named_parameters() if p.grad is not None})
    return state


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", GRADIENT_LEVEL)
def test_a_non_finite_gradient_names_the_task_and_the_method_and_changes_nothing(name, bad):
    weighting = make(name, ALL)
    weighting.combine(torch.randn(3, 16), random_losses())  # some state first
    before = state_of(weighting)
    grads = torch.randn(3, 16)
    grads[1, 5] = bad
    with pytest.raises(NonFiniteError, match=rf"{name}.*task 't1'"):
        weighting.combine(grads, random_losses())
    after = state_of(weighting)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], msg=key)


@pytest.mark.parametrize("name", GRADIENT_LEVEL)
def test_a_non_finite_loss_of_a_present_task_is_refused(name):
    losses = random_losses()
    losses[2] = float("nan")
    with pytest.raises(NonFiniteError, match="task 't2'"):
        make(name, ALL).combine(torch.randn(3, 8), losses)


def test_famo_refuses_a_non_finite_loss_after_the_step_and_keeps_its_logits():
    famo = make("famo", ALL)
    famo(random_losses())
    famo.after_step(random_losses())
    before = state_of(famo)
    after_losses = random_losses()
    after_losses[0] = float("inf")
    with pytest.raises(NonFiniteError, match="famo.*task 't0'"):
        famo.after_step(after_losses)
    for key, value in state_of(famo).items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_famo_leaves_an_absent_tasks_logit_and_adam_state_alone():
    famo = make("famo", ALL)
    for _ in range(3):
        famo(random_losses())
        famo.after_step(random_losses() * 0.5)
    before = state_of(famo)
    famo(random_losses(), present=PRESENT)
    famo.after_step(random_losses() * 0.5, present=PRESENT)
    for key in ("logits", "adam_exp_avg", "adam_exp_avg_sq", "adam_steps"):
        assert famo.state_dict()[key][1] == before[key][1], key
        assert (famo.state_dict()[key][[0, 2]] != before[key][[0, 2]]).all(), key


def test_dwa_keeps_the_history_of_a_task_absent_for_a_whole_epoch():
    dwa = make("dwa", ALL)
    dwa.end_epoch(torch.tensor([1.0, 1.0, 1.0]))
    dwa.end_epoch(torch.tensor([0.5, 0.9, 1.0]))
    history = dwa.epoch_losses.clone()
    dwa.end_epoch(torch.tensor([0.25, 0.0, 1.0]), present=PRESENT)  # t1 had no label all epoch: its 0 is no loss
    assert dwa.epoch_losses[0, 1] == history[0, 1] and dwa.epoch_losses[1, 1] == history[1, 1]
    assert dwa.epochs_seen.tolist() == [3, 2, 3]
    ratios = torch.tensor([0.25 / 0.5, 0.9 / 1.0, 1.0])
    torch.testing.assert_close(dwa.weights(), 3 * torch.softmax(ratios / 2.0, dim=0))
    with pytest.raises(NonFiniteError, match="dwa.*task 't2'"):
        dwa.end_epoch(torch.tensor([0.2, 0.2, float("nan")]))


def test_uncertainty_gives_an_absent_tasks_log_variance_no_gradient():
    weighting = make("uncertainty", ALL)
    weighting(random_losses(), present=PRESENT).backward()
    assert weighting.log_variances.grad[1] == 0 and (weighting.log_variances.grad[[0, 2]] != 0).all()


def small_model():
    spec = {"dim": 16,
            "encoders": {"image": {"name": "cnn"}, "audio": {"name": "sequence_transformer", "in_features": 5,
                                                             "depth": 1}},
            "fusion": {"name": "concat"},
            "tasks": {"digit": {"head": "classification", "num_classes": 4}, "match": {"head": "binary"},
                      "size": {"head": "regression"}}}
    return build_model(spec)


def test_the_model_marks_tasks_without_a_labelled_sample():
    model = small_model()
    inputs = {"image": torch.randn(4, 1, 8, 8), "audio": torch.randn(4, 6, 5)}
    output = model(inputs)
    targets = {"digit": torch.tensor([-100, -100, -100, -100]), "match": torch.rand(4).round()}
    masks = {"match": torch.tensor([False, True, False, False])}
    assert model.labelled_tasks(output, targets, masks).tolist() == [False, True, False]
    masks["match"] = torch.zeros(4, dtype=torch.bool)
    targets["digit"] = torch.tensor([1, -100, 2, 3])
    targets["size"] = torch.randn(4)
    assert model.labelled_tasks(output, targets, masks).tolist() == [True, False, True]


def test_compute_loss_leaves_an_absent_task_out_of_the_uncertainty_terms():
    model = small_model()
    model.weighting = make("uncertainty", ["digit", "match", "size"])
    with torch.no_grad():
        model.weighting.log_variances.copy_(torch.tensor([0.3, -0.7, 0.2]))
    output = model({"image": torch.randn(4, 1, 8, 8), "audio": torch.randn(4, 6, 5)})
    targets = {"digit": torch.randint(0, 4, (4,)), "size": torch.randn(4)}  # no "match" target in this batch
    total, per_task = model.compute_loss(output, targets)
    s = model.weighting.log_variances.detach()
    expected = sum(0.5 * torch.exp(-s[i]) * per_task[task] + 0.5 * s[i] for i, task in [(0, "digit"), (2, "size")])
    torch.testing.assert_close(total, expected)
