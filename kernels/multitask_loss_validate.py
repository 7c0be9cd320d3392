"""Argument checks for :func:`mtmm_kernels.multitask_loss`.

Every problem raises ``ValueError`` naming the task index (and its kind once known),
e.g. ``task 2 (cross_entropy): target class 12 at sample 5 is out of range [0, 10)``,
instead of an error from deep inside a kernel. The checks of label values and of finite
weights read tensors on the host (a device sync on a GPU): they run only while
:func:`~mtmm_kernels._validate.value_checks_enabled`; :func:`check_label_values` runs the
label check on any tensors, e.g. a batch's host copy before it goes to the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ._validate import value_checks_enabled

#: Loss kinds the fused multitask loss computes (``contrastive`` stays in mtmm_core.losses).
KINDS = ("cross_entropy", "bce", "mse", "l1", "huber")
#: Prediction dtypes accepted; every backend accumulates in float32 (float64 stays float64).
PRED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Default multiplier ``c_i`` of ``exp(-s_i) * L_i`` in uncertainty weighting.
UNCERTAINTY_SCALE = 0.5


@dataclass(frozen=True)
class MultitaskArgs:
    """Checked arguments of one call; task ``i`` is entry ``i`` of every tuple.

    ``preds[i]``: ``[B_i, C_i]`` logits (cross_entropy) or ``[B_i]`` / ``[B_i, K_i]``.
    ``targets[i]``: int ``[B_i]`` (cross_entropy) or the shape of ``preds[i]``.
    ``masks[i]``: bool ``[B_i]`` or None (every sample labelled).
    ``task_weights``: ``[T]`` in ``loss_dtype``: the static weights ``w_i``, or with
    ``log_vars`` the multipliers ``c_i`` of ``c_i * exp(-s_i) * L_i + 0.5 * s_i``.
    ``log_vars``: ``[T]`` (differentiable) or None. ``loss_dtype``: float32, or float64
    when any prediction is float64.
    """

    preds: tuple[torch.Tensor, ...]
    targets: tuple[torch.Tensor, ...]
    kinds: tuple[str, ...]
    masks: tuple[torch.Tensor | None, ...]
    task_weights: torch.Tensor
    log_vars: torch.Tensor | None
    ignore_index: int
    loss_dtype: torch.dtype

    @property
    def num_tasks(self) -> int:
        return len(self.kinds)


def _check_lengths(preds: Sequence, targets: Sequence, kinds: Sequence, task_masks: Sequence | None) -> int:
    for name, value in (("preds", preds), ("targets", targets), ("kinds", kinds), ("task_masks", task_masks)):
        if value is not None and (isinstance(value, (str, torch.Tensor)) or not isinstance(value, Sequence)):
            raise ValueError(f"{name} must be a list with one entry per task, got {type(value).__name__}")
    lengths = {"preds": len(preds), "targets": len(targets), "kinds": len(kinds)}
    if task_masks is not None:
        lengths["task_masks"] = len(task_masks)
    if len(set(lengths.values())) != 1:
        listed = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"the lists of tasks have different lengths: {listed} (one entry per task)")
    if not preds:
        raise ValueError("multitask_loss needs at least one task; preds is empty")
    return len(preds)


def _check_task(i: int, kind: object, pred: object, target: object, mask: object, device: torch.device,
                ignore_index: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"task {i}: loss kind {kind!r} is unknown; valid kinds: {', '.join(KINDS)}")
    where = f"task {i} ({kind})"
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(f"{where}: prediction and target must be tensors, got "
                         f"{type(pred).__name__} and {type(target).__name__}")
    if pred.dtype not in PRED_DTYPES:
        raise ValueError(f"{where}: predictions have dtype {pred.dtype}; expected float16, bfloat16, float32 "
                         "or float64")
    if pred.device != device or target.device != device:
        raise ValueError(f"{where}: prediction on {pred.device} and target on {target.device}; every tensor "
                         f"must be on {device} (the device of task 0's prediction)")
    if kind == "cross_entropy":
        if pred.dim() != 2 or pred.shape[1] < 1:
            raise ValueError(f"{where}: logits must have shape [B, C] with C >= 1, got {list(pred.shape)}")
        if target.shape != pred.shape[:1]:
            raise ValueError(f"{where}: targets must have shape [B={pred.shape[0]}], got {list(target.shape)}")
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise ValueError(f"{where}: targets must be integer class indices, got dtype {target.dtype}")
    else:
        if pred.dim() not in (1, 2):
            raise ValueError(f"{where}: predictions must have shape [B] or [B, K], got {list(pred.shape)}")
        if target.shape != pred.shape:
            raise ValueError(f"{where}: targets must have the shape of the predictions {list(pred.shape)}, "
                             f"got {list(target.shape)}")
        if not target.dtype.is_floating_point:
            raise ValueError(f"{where}: targets must be floating point, got dtype {target.dtype}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != pred.shape[:1]:
            got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"{where}: task mask must be bool [B={pred.shape[0]}], got {got}")
        if mask.device != device:
            raise ValueError(f"{where}: task mask is on {mask.device}, expected {device}")


def _bad_labels(kind: str, target: torch.Tensor, mask: torch.Tensor | None, num_classes: int | None,
                ignore_index: int) -> torch.Tensor | None:
    """Bool ``[B]`` (on the targets' device, no host sync): labelled samples whose target the loss cannot
    take, a class index outside ``[0, num_classes)`` (cross_entropy; any negative one when ``num_classes`` is
    None) or a probability outside ``[0, 1]`` (bce); None for the other kinds."""
    if kind == "cross_entropy":
        labelled = target != ignore_index
        bad = (target < 0) if num_classes is None else (target < 0) | (target >= num_classes)
    elif kind == "bce":
        labelled = torch.ones(target.shape[:1], dtype=torch.bool, device=target.device)
        outside = (target < 0) | (target > 1)
        bad = outside if outside.dim() == 1 else outside.flatten(1).any(dim=1)
    else:
        return None
    if mask is not None:
        labelled = labelled & mask.to(device=target.device, dtype=torch.bool)
    return labelled & bad


def check_label_values(kinds: Sequence[str], targets: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                       num_classes: Sequence[int | None], ignore_index: int = -100,
                       names: Sequence[str] | None = None) -> None:
    """Raise ValueError for the first task with a labelled target its loss cannot take: a class index
    outside ``[0, num_classes[i])`` (cross_entropy) or a binary target outside ``[0, 1]`` (bce).

    Reads one flag on the host for all tasks together (and more only to describe a bad label). Task
    ``i`` is named ``names[i]`` when given, else by its index.
    """
    bad = [_bad_labels(kind, target, mask, classes, ignore_index)
           for kind, target, mask, classes in zip(kinds, targets, masks, num_classes)]
    flagged = [(i, b) for i, b in enumerate(bad) if b is not None]
    if not flagged or not bool(torch.stack([b.any() for _, b in flagged]).any()):
        return
    for i, b in flagged:
        if bool(b.any()):
            sample = int(b.nonzero()[0, 0])
            where = f"task {names[i]!r} ({kinds[i]})" if names is not None else f"task {i} ({kinds[i]})"
            if kinds[i] == "cross_entropy":
                limit = f"[0, {num_classes[i]})" if num_classes[i] is not None else "[0, C)"
                raise ValueError(f"{where}: target class {int(targets[i][sample])} at sample {sample} is out of "
                                 f"range {limit} (ignore_index={ignore_index})")
            value = targets[i][sample].flatten()
            shown = float(value[((value < 0) | (value > 1)).nonzero()[0, 0]])
            raise ValueError(f"{where}: target {shown:g} at sample {sample} is outside [0, 1]; binary targets "
                             "are probabilities (0 or 1 for hard labels)")


def _task_vector(name: str, value: object, num_tasks: int, device: torch.device, dtype: torch.dtype,
                 finite_only: bool = True) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=dtype)
    if tensor.shape != (num_tasks,):
        raise ValueError(f"{name} must have shape [T={num_tasks}] (one value per task), got {list(tensor.shape)}")
    if finite_only and value_checks_enabled():
        finite = torch.isfinite(tensor.detach())
        if not bool(finite.all()):
            task = int((~finite).nonzero()[0, 0])
            raise ValueError(f"task {task}: {name}[{task}] = {float(tensor[task])} is not finite")
    return tensor.to(device=device, dtype=dtype)


def validate_multitask_args(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], kinds: Sequence[str],
                            weights: torch.Tensor | Sequence[float] | None, log_vars: torch.Tensor | None,
                            task_masks: Sequence[torch.Tensor | None] | None, ignore_index: int) -> MultitaskArgs:
    """Check every task's kind, shapes, dtypes, devices and masks, and, while value checks are on, its
    labels (class indices in range, binary targets in [0, 1]; one host read for all tasks) and finite
    weights; resolve the weights."""
    num_tasks = _check_lengths(preds, targets, kinds, task_masks)
    masks = tuple(task_masks) if task_masks is not None else (None,) * num_tasks
    if not isinstance(preds[0], torch.Tensor):
        raise ValueError(f"task 0: prediction must be a tensor, got {type(preds[0]).__name__}")
    device = preds[0].device
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    for i in range(num_tasks):
        _check_task(i, kinds[i], preds[i], targets[i], masks[i], device, ignore_index)
    if value_checks_enabled():
        check_label_values(kinds, targets, masks,
                           [p.shape[1] if k == "cross_entropy" else None for p, k in zip(preds, kinds)], ignore_index)
    loss_dtype = torch.float64 if any(p.dtype == torch.float64 for p in preds) else torch.float32
    if log_vars is not None:
        if not isinstance(log_vars, torch.Tensor):
            raise ValueError(f"log_vars must be a tensor [T={num_tasks}], got {type(log_vars).__name__}")
        log_vars = _task_vector("log_vars", log_vars, num_tasks, device, log_vars.dtype)
    default = UNCERTAINTY_SCALE if log_vars is not None else 1.0
    task_weights = (torch.full((num_tasks,), default, dtype=loss_dtype, device=device) if weights is None
                    else _task_vector("weights", weights, num_tasks, device, loss_dtype).detach())
    return MultitaskArgs(tuple(preds), tuple(targets), tuple(kinds), masks, task_weights, log_vars,
                         ignore_index, loss_dtype)
