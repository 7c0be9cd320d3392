"""Task makers and comparisons shared by the multitask-loss tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: (atol, rtol) of gradients against the float64 reference, scaled to its magnitude; losses use float32's.
GRAD_TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
LOSS_TOLERANCE = (1e-5, 1e-4)


@dataclass
class TaskBatch:
    """One task's inputs: ``pred`` a leaf with grad, ``target``, ``mask`` bool ``[B]`` or None."""

    kind: str
    pred: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor | None


def make_task(kind: str, batch: int, width: int | None, dtype: torch.dtype = torch.float32,
              labelled: float | None = None, device: str = "cpu", logit_scale: float = 3.0,
              ignore_fraction: float = 0.0, ignore_index: int = -100) -> TaskBatch:
    """Random task inputs. ``width``: classes C (cross entropy) or K (None means ``[B]``).

    ``labelled``: fraction of samples with a label (None: no mask). Unlabelled targets are
    filled with garbage (NaN, or an out-of-range class) that must never reach the loss.
    """
    if kind == "cross_entropy":
        pred = torch.randn(batch, width, device=device) * logit_scale
        target = torch.randint(0, width, (batch,), device=device)
        if ignore_fraction:
            target = target.masked_fill(torch.rand(batch, device=device) < ignore_fraction, ignore_index)
    else:
        shape = (batch,) if width is None else (batch, width)
        pred = torch.randn(shape, device=device) * logit_scale
        target = torch.rand(shape, device=device) if kind == "bce" else torch.randn(shape, device=device) * 2
    mask = None
    if labelled is not None:
        mask = torch.rand(batch, device=device) < labelled
        garbage = width + 7 if kind == "cross_entropy" else float("nan")
        target = target.masked_fill(~mask.view(-1, *([1] * (target.dim() - 1))), garbage)
    return TaskBatch(kind, pred.to(dtype).requires_grad_(), target, mask)


def loss_and_grads(fn, tasks: list[TaskBatch], log_vars: torch.Tensor | None = None, mix: torch.Tensor | None = None,
                   **kwargs) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Run ``fn`` (multitask_loss or the reference) and differentiate ``total + mix . per_task``.

    Returns ``(total, per_task, grads of each pred, grad of log_vars or None)``. The reference
    gets float64 copies of the predictions and ``log_vars``.
    """
    reference = "reference" in getattr(fn, "__name__", "")
    preds = [t.pred.detach().double().requires_grad_() if reference else t.pred for t in tasks]
    s = None if log_vars is None else (log_vars.detach().double().requires_grad_() if reference else log_vars)
    total, per_task = fn(preds, [t.target for t in tasks], [t.kind for t in tasks], log_vars=s,
                         task_masks=[t.mask for t in tasks], **kwargs)
    objective = total if mix is None else total + (per_task * mix.to(per_task.dtype)).sum()
    inputs = preds + ([s] if s is not None else [])
    grads = list(torch.autograd.grad(objective, inputs))
    grad_s = grads.pop() if s is not None else None
    return total.detach(), per_task.detach(), grads, grad_s


def assert_matches_reference(fn, tasks: list[TaskBatch], log_vars: torch.Tensor | None = None,
                             mix: torch.Tensor | None = None, **kwargs) -> None:
    """Values, gradients of every prediction and of ``log_vars`` against the float64 reference."""
    from .multitask_loss_reference import multitask_loss_reference

    total, per_task, grads, grad_s = loss_and_grads(fn, tasks, log_vars, mix, **kwargs)
    ref = loss_and_grads(multitask_loss_reference, tasks, log_vars, mix, **kwargs)
    atol, rtol = LOSS_TOLERANCE
    for name, got, want in (("total", total, ref[0]), ("per_task", per_task, ref[1]), ("d log_vars", grad_s, ref[3])):
        if want is None:
            continue
        assert torch.isfinite(got).all(), f"{name}: non-finite"
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.double(), want, atol=atol * scale, rtol=rtol, msg=lambda m: f"{name}: {m}")
    for i, (task, got, want) in enumerate(zip(tasks, grads, ref[2])):
        assert got.dtype == task.pred.dtype and torch.isfinite(got).all(), f"task {i}: grad dtype or non-finite"
        atol, rtol = GRAD_TOLERANCES[task.pred.dtype]
        scale = max(want.abs().max().item(), 1e-30)
        torch.testing.assert_close(got.double(), want, atol=atol * scale, rtol=rtol,
                                   msg=lambda m: f"task {i} ({task.kind}) grad: {m}")
