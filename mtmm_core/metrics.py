"""Per-task evaluation metrics, computed on whole splits from collected predictions and targets."""

from __future__ import annotations

import torch

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "auroc": True, "retrieval_accuracy": True,
                    "mae": False, "rmse": False, "r2": True, "loss": False}


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


def regression_metrics(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MAE, RMSE and R^2 of ``prediction`` against ``target`` (same shape)."""
    error = prediction.double() - target.double()
    variance = ((target.double() - target.double().mean()) ** 2).sum()
    r2 = 1.0 - (error**2).sum() / variance if variance > 0 else torch.tensor(float("nan"))
    return {"mae": error.abs().mean().item(), "rmse": error.pow(2).mean().sqrt().item(), "r2": float(r2)}


def retrieval_accuracy(logits: torch.Tensor) -> float:
    """Share of rows of a similarity matrix ``[N, N]`` whose best match is the diagonal."""
    return (logits.argmax(dim=1) == torch.arange(len(logits), device=logits.device)).float().mean().item()


def task_metrics(names: tuple[str, ...], prediction: torch.Tensor, target: torch.Tensor | None) -> dict[str, float]:
    """The metrics ``names`` (a head's ``metrics``) of one task on a whole split."""
    results: dict[str, float] = {}
    if any(n in names for n in ("mae", "rmse", "r2")):
        results.update({k: v for k, v in regression_metrics(prediction, target).items() if k in names})
    for name in names:
        if name == "accuracy":
            results[name] = accuracy(prediction, target)
        elif name == "macro_f1":
            results[name] = macro_f1(prediction, target)
        elif name == "auroc":
            results[name] = auroc(prediction, target)
        elif name == "retrieval_accuracy":
            results[name] = retrieval_accuracy(prediction)
    return results
