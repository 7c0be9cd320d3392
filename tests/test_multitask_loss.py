"""multitask_loss (PyTorch fallback) against the float64 reference; validation; backend choice.

The Triton kernel runs the same checks in tests/test_multitask_loss_triton.py.
"""

from __future__ import annotations

import pytest
import torch

from mtmm_core.losses import task_loss
from mtmm_kernels.multitask_loss import multitask_loss, resolve_multitask_backend
from mtmm_kernels.multitask_loss_testing import assert_matches_reference, make_task
from mtmm_kernels.multitask_loss_validate import validate_multitask_args

f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
KIND_WIDTHS = [("cross_entropy", 10), ("cross_entropy", 1000), ("bce", None), ("bce", 5), ("mse", None),
               ("mse", 3), ("l1", 4), ("huber", None), ("huber", 6)]


def torch_backend(*args, **kwargs):
    return multitask_loss(*args, backend="torch", **kwargs)


@pytest.mark.parametrize("dtype", [f32, f16, bf16])
@pytest.mark.parametrize(("kind", "width"), KIND_WIDTHS)
def test_every_kind_matches_reference(kind, width, dtype):
    torch.manual_seed(0)
    assert_matches_reference(torch_backend, [make_task(kind, 37, width, dtype)])


@pytest.mark.parametrize("dtype", [f32, bf16])
def test_mixed_tasks_masks_ignore_index_and_log_vars(dtype):
    torch.manual_seed(1)
    tasks = [make_task("cross_entropy", 64, 7, dtype, labelled=0.6, ignore_fraction=0.3),
             make_task("bce", 64, 4, dtype, labelled=0.5), make_task("mse", 64, None, f32),
             make_task("l1", 64, 2, dtype, labelled=0.9), make_task("huber", 64, None, dtype, labelled=0.3)]
    log_vars = torch.randn(5, requires_grad=True)
    mix = torch.rand(5)  # also differentiate through per_task, not only the total
    assert_matches_reference(torch_backend, tasks, log_vars=log_vars, mix=mix)
    assert_matches_reference(torch_backend, tasks, mix=mix, weights=torch.rand(5))
    assert_matches_reference(torch_backend, tasks, log_vars=log_vars, weights=[1.0, 0.5, 0.5, 1.0, 0.5])


def test_tasks_may_differ_in_batch_size():
    tasks = [make_task("cross_entropy", 5, 3), make_task("mse", 9, 2), make_task("bce", 1, None)]
    assert_matches_reference(torch_backend, tasks)


@pytest.mark.parametrize("kind", ["cross_entropy", "bce", "huber"])
def test_task_without_labels_gives_zero_loss_and_zero_grad(kind):
    task = make_task(kind, 8, 5, labelled=0.0)
    other = make_task("mse", 8, None)
    total, per_task = torch_backend([task.pred, other.pred], [task.target, other.target], [kind, "mse"],
                                    task_masks=[task.mask, None], log_vars=torch.zeros(2, requires_grad=True))
    assert per_task[0].item() == 0.0 and torch.isfinite(total)
    total.backward()
    assert torch.equal(task.pred.grad, torch.zeros_like(task.pred))


def test_all_targets_ignored_gives_zero():
    pred = torch.randn(4, 3, requires_grad=True)
    total, per_task = torch_backend([pred], [torch.full((4,), -1)], ["cross_entropy"], ignore_index=-1)
    total.backward()
    assert total.item() == 0.0 and per_task.item() == 0.0 and not pred.grad.any()


@pytest.mark.parametrize("dtype", [f32, f16, bf16])
def test_extreme_logits_stay_finite_and_exact(dtype):
    torch.manual_seed(2)
    tasks = [make_task("cross_entropy", 16, 50, dtype, logit_scale=1e4), make_task("bce", 16, 3, dtype, logit_scale=1e4)]
    assert_matches_reference(torch_backend, tasks)


def test_uncertainty_gradient_formula():
    tasks = [make_task("mse", 16, None), make_task("cross_entropy", 16, 4)]
    s = torch.tensor([0.3, -0.7], requires_grad=True)
    total, per_task = torch_backend([t.pred for t in tasks], [t.target for t in tasks], ["mse", "cross_entropy"],
                                    log_vars=s)
    total.backward()
    torch.testing.assert_close(s.grad, 0.5 * (1 - torch.exp(-s.detach()) * per_task.detach()))


def test_matches_the_models_task_loss():
    for kind, width in KIND_WIDTHS:
        task = make_task(kind, 12, width, labelled=0.7)
        _, per_task = torch_backend([task.pred], [task.target], [kind], task_masks=[task.mask])
        torch.testing.assert_close(per_task[0], task_loss(kind, task.pred, task.target, task.mask))


def _args():
    return ([torch.randn(4, 3), torch.randn(4)], [torch.tensor([0, 1, 2, 0]), torch.randn(4)], ["cross_entropy", "mse"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p, t, k, kw: k.__setitem__(1, "focal"), r"task 1: loss kind 'focal' is unknown"),
        (lambda p, t, k, kw: t.pop(), r"preds has 2, targets has 1, kinds has 2"),
        (lambda p, t, k, kw: kw.update(task_masks=[None]), r"task_masks has 1"),
        (lambda p, t, k, kw: t.__setitem__(0, torch.tensor([0, 1, 3, 0])), r"task 0 \(cross_entropy\): target class 3 at sample 2.*\[0, 3\)"),
        (lambda p, t, k, kw: t.__setitem__(0, torch.tensor([0, -2, 1, 0])), r"task 0.*class -2 at sample 1"),
        (lambda p, t, k, kw: t.__setitem__(0, torch.zeros(4)), r"task 0 \(cross_entropy\): targets must be integer"),
        (lambda p, t, k, kw: t.__setitem__(0, torch.zeros(5, dtype=torch.long)), r"task 0.*shape \[B=4\], got \[5\]"),
        (lambda p, t, k, kw: p.__setitem__(0, torch.randn(4)), r"task 0 \(cross_entropy\): logits must have shape \[B, C\]"),
        (lambda p, t, k, kw: t.__setitem__(1, torch.randn(4, 1)), r"task 1 \(mse\): targets must have the shape"),
        (lambda p, t, k, kw: p.__setitem__(1, torch.randn(4, 2, 2)), r"task 1 \(mse\): predictions must have shape"),
        (lambda p, t, k, kw: p.__setitem__(1, torch.ones(4, dtype=torch.long)), r"task 1 \(mse\): predictions have dtype"),
        (lambda p, t, k, kw: kw.update(task_masks=[None, torch.ones(4)]), r"task 1 \(mse\): task mask must be bool"),
        (lambda p, t, k, kw: kw.update(weights=[1.0]), r"weights must have shape \[T=2\]"),
        (lambda p, t, k, kw: kw.update(weights=[1.0, float("inf")]), r"task 1: weights\[1\] = inf is not finite"),
        (lambda p, t, k, kw: kw.update(log_vars=torch.zeros(3)), r"log_vars must have shape \[T=2\]"),
        (lambda p, t, k, kw: kw.update(backend="cuda"), r"backend must be one of"),
        (lambda p, t, k, kw: (k.__setitem__(1, "bce"), t.__setitem__(1, torch.tensor([0.0, 1.0, 2.0, 1.0]))),
         r"task 1 \(bce\): target 2 at sample 2 is outside \[0, 1\]"),
        (lambda p, t, k, kw: (k.__setitem__(1, "bce"), p.__setitem__(1, torch.randn(4, 2)),
                              t.__setitem__(1, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, -0.25]]))),
         r"task 1 \(bce\): target -0.25 at sample 3 is outside \[0, 1\]"),
    ],
)
def test_bad_input_raises_naming_the_task(change, message):
    preds, targets, kinds = map(list, _args())
    kwargs = {}
    change(preds, targets, kinds, kwargs)
    with pytest.raises(ValueError, match=message):
        multitask_loss(preds, targets, kinds, **kwargs)


def test_a_binary_target_outside_0_1_is_fine_where_unlabelled():
    preds, targets = [torch.randn(4)], [torch.tensor([0.0, 1.0, 2.0, 1.0])]
    _, per_task = multitask_loss(preds, targets, ["bce"], task_masks=[torch.tensor([True, True, False, True])])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(preds[0].double()[[0, 1, 3]],
                                                                    targets[0].double()[[0, 1, 3]])
    torch.testing.assert_close(per_task[0].double(), expected, rtol=1e-6, atol=1e-7)


def test_out_of_range_class_is_fine_where_unlabelled():
    preds, targets, kinds = _args()
    targets[0][2] = 99
    mask = torch.tensor([True, True, False, True])
    total, _ = multitask_loss(preds, targets, kinds, task_masks=[mask, None])
    assert torch.isfinite(total)


def test_backend_choice_on_cpu(monkeypatch):
    a = validate_multitask_args(*_args(), None, None, None, -100)
    monkeypatch.delenv("MTMM_KERNEL_BACKEND", raising=False)
    assert resolve_multitask_backend("auto", a) == "torch"
    monkeypatch.setenv("MTMM_KERNEL_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MTMM_KERNEL_BACKEND"):
        resolve_multitask_backend("auto", a)
    monkeypatch.setenv("MTMM_KERNEL_BACKEND", "torch")
    assert resolve_multitask_backend("auto", a) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' cannot run.*TRITON_INTERPRET"):
        resolve_multitask_backend("triton", a)


def test_float64_predictions_give_float64_losses():
    pred = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    total, per_task = multitask_loss([pred], [torch.tensor([0, 1, 2])], ["cross_entropy"])
    assert total.dtype == per_task.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: multitask_loss([x], [torch.tensor([0, 1, 2])], ["cross_entropy"])[0], pred)
