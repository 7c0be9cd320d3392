"""Evaluation on a whole split: per-task metrics and losses, gathered across ranks when distributed."""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable, NamedTuple

import numpy as np
import torch

from mtmm_core import distributed
from mtmm_core.contracts import Batch
from mtmm_core.errors import UsageError
from mtmm_core.metrics import higher_is_better, task_metrics
from mtmm_core.losses import IGNORE_INDEX
from mtmm_core.model import MultimodalMultitaskModel
from mtmm_kernels.multitask_loss_validate import check_label_values


def select_modalities(requested: str | Iterable[str] | None, available: Iterable[str],
                      source: str = "--modalities") -> list[str] | None:
    """The modalities to evaluate with: ``requested`` (a comma-separated string or a list), checked
    against the model's ``available`` ones; None (all) when ``requested`` is None. A name the model
    lacks, or an empty selection, is a UsageError naming ``source`` with the valid names and a close match."""
    if requested is None:
        return None
    names = requested.split(",") if isinstance(requested, str) else list(requested)
    names = list(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))
    available = sorted(available)
    if not names:
        raise UsageError(f"{source}: no modality given; this model takes {', '.join(available)}")
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{source}: unknown modality {name!r}{hint}; this model takes {', '.join(available)}")
    return names


def to_device(batch: Batch, device: torch.device, modalities: list[str] | None = None,
              tasks: list[str] | None = None) -> Batch:
    """Move a batch's tensors to ``device``, keeping only ``modalities`` and the targets of ``tasks``
    when given (a data set may label tasks that the model leaves out)."""

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    keep = (lambda d: d) if modalities is None else (lambda d: {m: v for m, v in (d or {}).items() if m in modalities})
    labelled = (lambda d: d) if tasks is None else (lambda d: {t: v for t, v in d.items() if t in tasks})
    return Batch(move(keep(batch.inputs)), move(keep(batch.lengths)), move(labelled(batch.targets)),
                 move(keep(batch.present)) if batch.present is not None else None,
                 move(labelled(batch.task_masks)) if batch.task_masks is not None else None)


def check_batch(model: MultimodalMultitaskModel, batch: Batch) -> None:
    """Check a batch's values where it enters: on the loader's tensors (on the host), before the copy to
    the device. It refuses what the model's value checks would (:meth:`~MultimodalMultitaskModel.check_values`:
    a sample without a modality, lengths, token ids or categories out of range) and what the fused loss's
    would (a labelled class index outside ``[0, num_classes)``, a binary target outside ``[0, 1]``), with
    the same ValueErrors, naming the modality or the task. The trainer then trains on the batch with the
    value checks off, so its steps never wait for the device (docs: ``mtmm_core.model.value_checks``).
    """
    model.check_values(batch.inputs, batch.lengths, batch.present)
    names, kinds, targets, masks, classes = [], [], [], [], []
    for task, head in model.heads.items():
        kind = model.losses[task].fused_kind
        if kind in ("cross_entropy", "bce") and task in batch.targets:
            names.append(task)
            kinds.append(kind)
            targets.append(batch.targets[task])
            masks.append((batch.task_masks or {}).get(task))
            classes.append(getattr(head, "num_classes", None))
    if kinds:
        check_label_values(kinds, targets, masks, classes, IGNORE_INDEX, names)


@torch.no_grad()
def evaluate(model: MultimodalMultitaskModel, split: Any, device: torch.device, batch_size: int = 256,
             modalities: list[str] | None = None, context: distributed.Context = distributed.Context()
             ) -> dict[str, float]:
    """Per-task metrics and losses on a whole split, flattened as ``"<task>.<metric>"`` plus ``"loss"``.

    ``modalities`` restricts the inputs to a subset (the model degrades, it does not fail). With
    several ranks each scores every ``world_size``-th sample and the results are gathered.
    """
    modalities = select_modalities(modalities, model.modalities, source="modalities")
    model.eval()
    predictions: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    targets: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    batch_scores: dict[str, list[dict[str, float]]] = {t: [] for t in model.tasks}
    loss_sums = torch.zeros(len(model.tasks), dtype=torch.float64)
    rows = np.arange(context.rank, len(split), context.world_size)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = to_device(split.batch(chunk), device, modalities, model.tasks)
        output = model(batch.inputs, batch.lengths, batch.present)
        loss_sums += model.task_losses(output, batch.targets, batch.task_masks).double().cpu() * len(chunk)
        for task, head in model.heads.items():
            prediction = output.predictions[task].float()
            if not model.losses[task].needs_target:  # e.g. similarities within a batch: score per batch
                batch_scores[task].append(task_metrics(head.metrics, prediction, None))
                continue
            mask = (batch.task_masks or {}).get(task)
            target = batch.targets[task]
            if mask is not None:
                prediction, target = prediction[mask], target[mask]
            predictions[task].append(prediction.cpu())
            targets[task].append(target.cpu())
    shards = distributed.gather((predictions, targets, batch_scores, loss_sums), context)
    loss_means = sum(shard[3] for shard in shards) / max(1, len(split))
    results: dict[str, float] = {}
    for index, (task, head) in enumerate(model.heads.items()):
        results[f"{task}.loss"] = float(loss_means[index])
        scores = [score for shard in shards for score in shard[2][task]]
        task_predictions = [p for shard in shards for p in shard[0][task]]
        if scores:
            results.update({f"{task}.{name}": float(np.mean([score[name] for score in scores]))
                            for name in head.metrics})
        elif task_predictions:
            task_targets = torch.cat([t for shard in shards for t in shard[1][task]])
            metrics = task_metrics(head.metrics, torch.cat(task_predictions), task_targets)
            results.update({f"{task}.{name}": value for name, value in metrics.items()})
    results["loss"] = float(loss_means.sum())
    return results


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` ("loss" or "<task>.<name>") improves on ``best``."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    higher = higher_is_better(metric.rpartition(".")[2])
    return value > best if higher else value < best


class ClassLabels(NamedTuple):
    """A classification task's true and predicted labels on a split, for a confusion matrix.

    ``true`` and ``predicted`` are int64 arrays of the same shape: ``[N]`` class indices in
    ``0..classes-1`` for a single-label head, ``[N]`` or ``[N, K]`` zeros and ones for a binary head
    (``classes`` 2). ``kind`` is the head's ``loss_kind`` (``cross_entropy`` or ``bce``).
    """

    kind: str
    true: np.ndarray
    predicted: np.ndarray
    classes: int


CLASSIFICATION_LOSSES = ("cross_entropy", "bce")


def classification_tasks(model: MultimodalMultitaskModel) -> list[str]:
    """The tasks whose head is a classifier: ``loss_kind`` ``cross_entropy`` (single-label) or ``bce``."""
    return [task for task, head in model.heads.items() if getattr(head, "loss_kind", None) in CLASSIFICATION_LOSSES]


@torch.no_grad()
def classification_labels(model: MultimodalMultitaskModel, split: Any, device: torch.device, batch_size: int = 256,
                          modalities: list[str] | None = None) -> dict[str, ClassLabels]:
    """True and predicted labels of each classification task (:func:`classification_tasks`) on a whole split.

    Only the samples that count in the task's loss are kept: its task mask, a target other than the
    loss's ``ignore_index`` (cross entropy's -100), the modalities its head needs. The predicted
    class is the argmax of a single-label head's logits, and ``logit > 0`` for a binary head.
    ``modalities`` restricts the inputs as in :func:`evaluate`. One process; :func:`evaluate` is unchanged.
    """
    modalities = select_modalities(modalities, model.modalities, source="modalities")
    tasks = classification_tasks(model)
    model.eval()
    true: dict[str, list[np.ndarray]] = {task: [] for task in tasks}
    predicted: dict[str, list[np.ndarray]] = {task: [] for task in tasks}
    classes = {task: int(getattr(model.heads[task], "num_classes", 2)) for task in tasks}
    for start in range(0, len(split), batch_size):
        batch = to_device(split.batch(np.arange(start, min(start + batch_size, len(split)))), device,
                          modalities, model.tasks)
        output = model(batch.inputs, batch.lengths, batch.present)
        for task in tasks:
            if task not in batch.targets:
                continue
            logits, target = output.predictions[task].float(), batch.targets[task]
            mask = model.counted_samples(task, output, target, (batch.task_masks or {}).get(task))
            if model.heads[task].loss_kind == "cross_entropy":
                classes[task] = int(logits.shape[1])
                guess, gold = logits.argmax(dim=1), target.long()
            else:
                guess, gold = (logits > 0).long(), (target.float() > 0.5).long()
            if mask is not None:
                mask = mask.to(guess.device, torch.bool)
                guess, gold = guess[mask], gold[mask]
            predicted[task].append(guess.cpu().numpy())
            true[task].append(gold.cpu().numpy())
    result = {}
    for task in tasks:
        gold = np.concatenate(true[task]) if true[task] else np.zeros(0, dtype=np.int64)
        guess = np.concatenate(predicted[task]) if predicted[task] else np.zeros(0, dtype=np.int64)
        result[task] = ClassLabels(model.heads[task].loss_kind, gold.astype(np.int64), guess.astype(np.int64),
                                   classes[task])
    return result
