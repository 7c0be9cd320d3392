"""``mtmm evaluate --plot``: a confusion matrix per classification task (one per label for a binary head)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mtmm_core.plot import _save, _style, pyplot


class Confusion(NamedTuple):
    """One confusion matrix: ``counts[i, j]`` samples of true class ``i`` predicted as ``j``."""

    title: str  # the task, and for a binary head with several labels, the label
    counts: np.ndarray  # [C, C] int64
    classes: list[str]


MAX_BINARY_LABELS = 12  # a multilabel head's first labels that get a matrix each


def confusion_counts(true: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``[classes, classes]`` int64 counts, rows the true class, columns the predicted one."""
    true, predicted = np.asarray(true, dtype=np.int64).ravel(), np.asarray(predicted, dtype=np.int64).ravel()
    if true.shape != predicted.shape:
        raise ValueError(f"true {true.shape} and predicted {predicted.shape} labels differ in shape")
    bad = (true < 0) | (true >= classes) | (predicted < 0) | (predicted >= classes)
    if bad.any():
        raise ValueError(f"labels outside 0..{classes - 1}: true {true[bad][:3].tolist()}, "
                         f"predicted {predicted[bad][:3].tolist()}")
    return np.bincount(true * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def confusion_matrices(labels: dict[str, Any]) -> list[Confusion]:
    """The matrices of :func:`mtmm_core.evaluation.classification_labels`: one per single-label task,
    one 2x2 per label of a binary task (its first MAX_BINARY_LABELS labels)."""
    matrices = []
    for task, entry in labels.items():
        true, predicted = np.asarray(entry.true), np.asarray(entry.predicted)
        if entry.kind == "cross_entropy":
            matrices.append(Confusion(task, confusion_counts(true, predicted, entry.classes),
                                      [str(c) for c in range(entry.classes)]))
            continue
        width = 1 if true.ndim == 1 else true.shape[1]
        for label in range(min(width, MAX_BINARY_LABELS)):
            column_true = true if true.ndim == 1 else true[:, label]
            column_predicted = predicted if predicted.ndim == 1 else predicted[:, label]
            title = task if width == 1 else f"{task}, label {label}"
            matrices.append(Confusion(title, confusion_counts(column_true, column_predicted, 2), ["0", "1"]))
    return matrices


def confusion_figure(matrices: list[Confusion], title: str = ""):
    """One panel per matrix: counts written in the cells, colours the share of the row (the true class)."""
    plt = pyplot()
    if not matrices:
        raise ValueError("no confusion matrix to draw")
    largest = max(len(m.classes) for m in matrices)
    side = min(9.0, max(3.0, 0.3 * largest + 1.4))  # inches per panel: 4.4 for 10 classes
    columns = min(len(matrices), 3 if side <= 4.6 else 2)
    rows = math.ceil(len(matrices) / columns)
    with plt.rc_context(_style()):
        figure, axes = plt.subplots(rows, columns, figsize=(side * columns + 1.0, side * rows + 0.5),
                                    layout="constrained", squeeze=False)
        image = None
        for axis, matrix in zip(axes.flat, matrices):
            counts = matrix.counts
            totals = counts.sum(axis=1, keepdims=True)
            shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
            image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
            size = len(matrix.classes)
            if size <= 25:
                font = 8 if size <= 10 else 6
                for i in range(size):
                    for j in range(size):
                        axis.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=font,
                                  color="white" if shares[i, j] > 0.6 else "black")
            if size <= 30:
                axis.set_xticks(range(size), matrix.classes)
                axis.set_yticks(range(size), matrix.classes)
            samples = int(counts.sum())
            accuracy = f"accuracy {np.trace(counts) / samples:.3f}" if samples else "no labelled sample"
            axis.set(title=f"{matrix.title}\n{samples} samples, {accuracy}", xlabel="predicted", ylabel="true")
        for axis in list(axes.flat)[len(matrices):]:
            axis.set_visible(False)
        figure.colorbar(image, ax=axes, shrink=min(1.0, 0.9 / rows + 0.1),
                        label="share of the true class (each row sums to 1)")
        if title:
            figure.suptitle(title)
    return figure


def plot_confusion(matrices: list[Confusion], out: str | Path, title: str = "") -> Path:
    """Write :func:`confusion_figure` to ``out``; returns its path."""
    return _save(confusion_figure(matrices, title), Path(out))
