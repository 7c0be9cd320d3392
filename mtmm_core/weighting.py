"""One backward step for any weighting, loss-level or gradient-level.

A loss-level weighting turns the task losses ``[T]`` into a total that is simply
backpropagated. A gradient-level weighting (class attribute ``gradient_level = True``)
needs each task's gradient with respect to something shared:

- ``gradient_mode = "representation"``: the fused features ``ModelOutput.fused``
  ``[B, D]``. The T gradients come from ONE batched ``torch.autograd.grad`` call (vmap
  over T one-hot ``grad_outputs``), which only runs back through the heads. The
  weighting combines them into one ``[B, D]`` gradient, which replaces the
  representation's gradient in a single ``losses.sum().backward()``: the encoders and
  the fusion receive the combined gradient, the architecture and heads (downstream
  of the representation) the plain sum of their task losses' gradients.
- ``gradient_mode = "parameters"``: a list of shared parameters. The same batched call
  differentiates every loss with respect to them (``[T, P]`` flattened); the combined
  gradient replaces theirs in the backward of the summed losses, and every other
  parameter receives the plain sum.

No graph is retained T times: the batched call keeps the graph once for the final backward.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import nn

from mtmm_core.contracts import GradientLevelWeighting


def is_gradient_level(weighting: nn.Module) -> bool:
    """True when ``weighting`` combines gradients (``gradient_level = True``) rather than losses."""
    return bool(getattr(weighting, "gradient_level", False))


def takes_present(method: object) -> bool:
    """True when ``method`` accepts a ``present`` keyword (every built-in weighting's methods do).

    A third-party weighting written before absent tasks were a rule keeps working: it is
    called without ``present`` and sees a loss of 0 (and a zero gradient) for an absent task.
    """
    try:
        return "present" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def call_with_present(method, values: torch.Tensor, present: torch.Tensor | None):
    """``method(values, present=present)`` where the method takes it, else ``method(values)``."""
    if present is not None and takes_present(method):
        return method(values, present=present)
    return method(values)


def weighted_total(weighting: nn.Module, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """The weighting's total ``[]`` of the task losses ``[T]``; ``present`` bool ``[T]`` marks the tasks
    with a labelled sample in the batch (None: all). A weighting that returns anything but a scalar
    tensor is an error naming it (its registered name when it has one), not autograd's."""
    total = call_with_present(weighting.forward, losses, present)
    if not isinstance(total, torch.Tensor) or total.dim() != 0:
        got = f"shape {list(total.shape)}" if isinstance(total, torch.Tensor) else type(total).__name__
        name = getattr(weighting, "mtmm_origin", None) or f"weighting {type(weighting).__name__!r}"
        raise ValueError(f"{name}: forward(losses [T={losses.shape[0]}]) must return the weighted "
                         f"total as a scalar tensor [], got {got}")
    return total


def task_gradients(losses: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-task gradients of ``losses`` ``[T]``: for each input ``[*S]`` a tensor ``[T, *S]`` (zeros where unused).

    One batched ``torch.autograd.grad`` call; the graph is retained for a later backward.
    """
    one_hot = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(losses, list(inputs), grad_outputs=one_hot, is_grads_batched=True,
                                retain_graph=True, allow_unused=True)
    return [torch.zeros((losses.shape[0], *x.shape), dtype=x.dtype, device=x.device) if g is None else g
            for g, x in zip(grads, inputs)]


def _shared_inputs(weighting: GradientLevelWeighting, shared: torch.Tensor | Sequence[torch.Tensor]
                   ) -> list[torch.Tensor]:
    mode = weighting.gradient_mode
    if mode == "representation":
        if not isinstance(shared, torch.Tensor):
            raise ValueError("gradient_mode 'representation' needs the shared representation tensor "
                             "(ModelOutput.fused), got a list")
        inputs = [shared]
    elif mode == "parameters":
        inputs = [shared] if isinstance(shared, torch.Tensor) else list(shared)
        if not inputs:
            raise ValueError("gradient_mode 'parameters' needs a non-empty list of shared parameters")
    else:
        raise ValueError(f"unknown gradient_mode {mode!r}; expected 'representation' or 'parameters'")
    for x in inputs:
        if not x.requires_grad:
            raise ValueError(f"the shared {mode} must require grad (shape {list(x.shape)} does not)")
    return inputs


def weighted_backward(weighting: nn.Module, losses: torch.Tensor,
                      shared: torch.Tensor | Sequence[nn.Parameter],
                      present: torch.Tensor | None = None) -> torch.Tensor:
    """Backpropagate the task losses ``[T]`` as ``weighting`` prescribes; return the total ``[]`` (detached).

    ``shared``: the representation ``[B, D]`` (``ModelOutput.fused``) or the list of shared
    parameters, matching the weighting's ``gradient_mode``; ignored by loss-level weightings.
    ``present``: bool ``[T]``, the tasks with a labelled sample in this batch
    (``model.labelled_tasks``); absent tasks take no part in the step (docs/weightings.md).
    Gradients accumulate into ``.grad`` like ``loss.backward()``; the caller zeroes and steps.
    """
    if not is_gradient_level(weighting):
        total = weighted_total(weighting, losses, present)
        total.backward()
        return total.detach()
    inputs = _shared_inputs(weighting, shared)
    per_task = task_gradients(losses, inputs)
    flat = torch.cat([g.flatten(1) for g in per_task], dim=1).float()  # [T, P]
    if present is not None and takes_present(weighting.combine):
        combined = weighting.combine(flat, losses.detach(), present=present)
    else:
        combined = weighting.combine(flat, losses.detach())
    if combined.shape != flat.shape[1:]:
        name = getattr(weighting, "mtmm_origin", None) or f"weighting {type(weighting).__name__!r}"
        raise ValueError(f"{name}: combine returned shape {list(combined.shape)}, "
                         f"expected [P={flat.shape[1]}]")
    pieces = torch.split(combined, [x.numel() for x in inputs])
    handles = [x.register_hook(lambda _grad, piece=piece, x=x: piece.view_as(x).to(x.dtype))
               for x, piece in zip(inputs, pieces)]
    try:
        losses.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        return weighted_total(weighting, losses.detach(), present)
