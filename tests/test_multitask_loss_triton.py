"""The fused Triton multitask loss against the float64 reference, values and gradients.

Without CUDA the kernels run under Triton's interpreter: tests/conftest.py sets
``TRITON_INTERPRET=1`` before ``mtmm_kernels.multitask_loss_triton`` (whose jit
functions read it once, at import) is first imported. Sizes stay small.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if sys.platform == "linux":
    import triton  # noqa: F401  (a required dependency on Linux: fail loudly if it is missing)
else:
    pytest.importorskip("triton")
if not torch.cuda.is_available():
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets TRITON_INTERPRET=1 without CUDA"

from mtmm_kernels.multitask_loss import multitask_loss  # noqa: E402
from mtmm_kernels.multitask_loss_testing import assert_matches_reference, make_task  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16


def fused(*args, **kwargs):
    return multitask_loss(*args, backend="triton", **kwargs)


def task(kind, batch, width, dtype=f32, **kwargs):
    return make_task(kind, batch, width, dtype, device=DEVICE, **kwargs)


@pytest.mark.parametrize("dtype", [f32, f16, bf16])
@pytest.mark.parametrize(("kind", "width"), [("cross_entropy", 10), ("bce", None), ("bce", 5), ("mse", 3),
                                             ("l1", None), ("huber", 6)])
def test_every_kind_matches_reference(kind, width, dtype):
    torch.manual_seed(0)
    assert_matches_reference(fused, [task(kind, 13, width, dtype)])


def test_many_classes_stream_the_row_in_chunks():
    torch.manual_seed(1)
    assert_matches_reference(fused, [task("cross_entropy", 3, 5000, labelled=0.7), task("mse", 3, None)])


@pytest.mark.parametrize("dtype", [f32, bf16])
def test_mixed_tasks_masks_ignore_index_weights_and_log_vars(dtype):
    torch.manual_seed(2)
    tasks = [task("cross_entropy", 21, 7, dtype, labelled=0.6, ignore_fraction=0.3), task("bce", 21, 4, dtype, labelled=0.5),
             task("mse", 21, None, f16), task("l1", 9, 2, dtype, labelled=0.9), task("huber", 21, None, dtype, labelled=0.3)]
    log_vars = torch.randn(5, device=DEVICE, requires_grad=True)
    mix = torch.rand(5, device=DEVICE)
    assert_matches_reference(fused, tasks, log_vars=log_vars, mix=mix)
    assert_matches_reference(fused, tasks, weights=torch.rand(5), mix=mix)
    assert_matches_reference(fused, tasks, log_vars=log_vars, weights=[1.0, 0.5, 0.5, 1.0, 0.5], ignore_index=-100)


def test_unlabelled_tasks_give_zero_and_are_never_read():
    torch.manual_seed(3)
    empty_ce = task("cross_entropy", 6, 4, labelled=0.0)
    empty_bce = task("bce", 6, 3, labelled=0.0)
    with torch.no_grad():  # NaN in unlabelled rows must not leak: those rows are not loaded
        empty_ce.pred.fill_(float("nan"))
        empty_bce.pred.fill_(float("nan"))
    other = task("mse", 6, None)
    tasks = [empty_ce, empty_bce, other]
    total, per_task = fused([t.pred for t in tasks], [t.target for t in tasks], [t.kind for t in tasks],
                            task_masks=[t.mask for t in tasks], log_vars=torch.zeros(3, device=DEVICE, requires_grad=True))
    assert per_task[0].item() == 0.0 and per_task[1].item() == 0.0 and torch.isfinite(total)
    total.backward()
    assert torch.equal(empty_ce.pred.grad, torch.zeros_like(empty_ce.pred))
    assert torch.equal(empty_bce.pred.grad, torch.zeros_like(empty_bce.pred))


@pytest.mark.parametrize("dtype", [f32, f16, bf16])
def test_extreme_logits(dtype):
    torch.manual_seed(4)
    assert_matches_reference(fused, [task("cross_entropy", 8, 50, dtype, logit_scale=1e4),
                                     task("bce", 8, 3, dtype, logit_scale=1e4)])


def test_uncertainty_gradient_formula_and_agreement_with_torch():
    torch.manual_seed(5)
    tasks = [task("mse", 8, None), task("cross_entropy", 8, 4)]
    s = torch.tensor([0.3, -0.7], device=DEVICE, requires_grad=True)
    total, per_task = fused([t.pred for t in tasks], [t.target for t in tasks], ["mse", "cross_entropy"], log_vars=s)
    total.backward()
    torch.testing.assert_close(s.grad, 0.5 * (1 - torch.exp(-s.detach()) * per_task.detach()))
    eager_total, eager_per_task = multitask_loss([t.pred for t in tasks], [t.target for t in tasks],
                                                 ["mse", "cross_entropy"], log_vars=s, backend="torch")
    torch.testing.assert_close(total, eager_total)
    torch.testing.assert_close(per_task, eager_per_task)


def test_non_contiguous_predictions_and_int32_targets():
    torch.manual_seed(6)
    ce = task("cross_entropy", 12, 7)
    ce.pred = torch.randn(7, 12, device=DEVICE).requires_grad_().t()  # [12, 7], non-contiguous
    ce.target = ce.target.int()
    mse = task("mse", 12, 4)
    mse.pred = torch.randn(4, 12, device=DEVICE).requires_grad_().t()
    assert_matches_reference(fused, [ce, mse])


def test_auto_on_cpu_still_picks_torch():
    if DEVICE == "cuda":
        pytest.skip("CPU dispatch only")
    pred = torch.randn(3, 4, requires_grad=True)
    total, _ = multitask_loss([pred], [torch.tensor([0, 1, 2])], ["cross_entropy"])
    assert "Sum" in type(total.grad_fn).__name__  # the PyTorch fallback's graph, not the fused Function
