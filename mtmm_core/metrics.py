"""Per-task evaluation metrics, computed on whole splits from collected predictions and targets.

The built-in metrics are registered through the ``register_metrics`` hook (``mtmm_plugins.metrics``),
like a plugin's; :func:`task_metrics` looks every name up in the registry.
"""

from __future__ import annotations

import torch

def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy of class logits ``[N, C]`` (or binary logits ``[N]``/``[N, K]``) against ``target``."""
    if logits.dim() == 2 and target.dim() == 1:
        return (logits.argmax(dim=1) == target).float().mean().item()
    return ((logits > 0).float() == target.float()).float().mean().item()


def macro_f1(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Unweighted mean over the classes present in ``target`` or predicted, of per-class F1."""
    predicted = logits.argmax(dim=1)
    classes = torch.unique(torch.cat([predicted, target]))
    scores = []
    for c in classes:
        tp = ((predicted == c) & (target == c)).sum().item()
        fp = ((predicted == c) & (target != c)).sum().item()
        fn = ((predicted != c) & (target == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(sum(scores) / len(scores))


def auroc(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` ``[N]`` for binary ``target`` ``[N]`` (ties count half).

    Multilabel ``[N, K]`` inputs give the mean over labels; NaN when a label has one class only.
    """
    if scores.dim() == 2:
        return float(torch.tensor([auroc(scores[:, k], target[:, k]) for k in range(scores.shape[1])]).nanmean())
    positive = target > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores.double())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values``, tied values sharing their mean rank."""
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=values.dtype)
    unique, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def mae(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error of ``prediction`` against ``target`` (same shape)."""
    return (prediction.double() - target.double()).abs().mean().item()


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Root mean squared error of ``prediction`` against ``target`` (same shape)."""
    return (prediction.double() - target.double()).pow(2).mean().sqrt().item()


def r2(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``; NaN when ``target`` is constant."""
    error = prediction.double() - target.double()
    variance = ((target.double() - target.double().mean()) ** 2).sum()
    return float(1.0 - (error**2).sum() / variance) if variance > 0 else float("nan")


def retrieval_accuracy(logits: torch.Tensor, target: torch.Tensor | None = None) -> float:
    """Share of rows of a similarity matrix ``[N, N]`` whose best match is the diagonal (no target)."""
    return (logits.argmax(dim=1) == torch.arange(len(logits), device=logits.device)).float().mean().item()


def task_metrics(names: tuple[str, ...], prediction: torch.Tensor, target: torch.Tensor | None) -> dict[str, float]:
    """The metrics ``names`` (a head's ``metrics``, registered names) of one task on a whole split."""
    from mtmm_core.components import get_component

    return {name: float(get_component("metric", name).factory(prediction, target)) for name in names}


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the metric ``name`` is better (``loss``: no; a registered metric: its
    ``higher_is_better`` metadata)."""
    if name == "loss":
        return False
    from mtmm_core.components import get_component

    return bool(get_component("metric", name).metadata.get("higher_is_better", True))
