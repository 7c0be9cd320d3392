"""Per-feature statistics of a data folder and the warnings ``mtmm data check`` prints about badly scaled
features (docs/data.md, "Feature statistics").

A feature is a column of an ``[N, F]`` array, a channel of an ``[N, C, ...]`` array (an image), or a
feature of a sequence's frames ``[total, F]``; its statistics (count, mean, population std, min, max,
as float32 values reach the model: ``scale`` applied) are taken over the samples where the modality
is present, reading the arrays a chunk at a time. Id modalities (``dtype: int64``) have none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtmm_core.datacheck import row_chunks

#: A feature whose mean is beyond this (in absolute value), or whose std is, is badly scaled.
SCALE_LIMIT = 1e3


def _accumulate(totals: dict[str, np.ndarray] | None, values: np.ndarray) -> dict[str, np.ndarray]:
    """Add ``values [n, F]`` (float64) to the running count, sum, sum of squares, min and max per feature."""
    if totals is None:
        width = values.shape[1]
        totals = {"count": np.zeros(1), "sum": np.zeros(width), "squares": np.zeros(width),
                  "min": np.full(width, np.inf), "max": np.full(width, -np.inf)}
    if len(values):
        totals["count"] += len(values)
        totals["sum"] += values.sum(axis=0)
        totals["squares"] += (values ** 2).sum(axis=0)
        totals["min"] = np.minimum(totals["min"], values.min(axis=0))
        totals["max"] = np.maximum(totals["max"], values.max(axis=0))
    return totals


def _as_features(chunk: np.ndarray) -> np.ndarray:
    """Rows ``[n, F]`` or ``[n, C, ...]`` as feature values ``[n * rest, F or C]`` (channels of images)."""
    if chunk.ndim <= 2:
        return chunk.reshape(len(chunk), -1)
    return np.moveaxis(chunk, 1, -1).reshape(-1, chunk.shape[1])


def feature_statistics(dataset: Any) -> dict[str, list[dict[str, float]]]:
    """``{modality: [{"count", "mean", "std", "min", "max"} per feature]}`` of a ``FolderDataset``'s float
    modalities, over the present samples (all rows of every split)."""
    found: dict[str, list[dict[str, float]]] = {}
    for name, opened in dataset._modalities.items():
        if opened.get("ids"):
            continue
        totals = None
        present = opened.get("present")
        scale = opened["scale"]
        if opened["kind"] == "array":
            array = opened["file"]
            row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
            for start, stop in row_chunks(len(array), row_bytes):
                chunk = np.asarray(array[start:stop], dtype=np.float64)
                if present is not None:
                    chunk = chunk[np.asarray(present[start:stop]).astype(bool)]
                totals = _accumulate(totals, _as_features(chunk) * scale)
        else:
            values, offsets = opened["values"], np.asarray(opened["offsets"]).astype(np.int64)
            keep = None
            if present is not None:  # frames of absent samples are left out
                keep = np.repeat(np.asarray(present).astype(bool), np.diff(offsets))
            for start, stop in row_chunks(len(values), values.dtype.itemsize * values.shape[1]):
                chunk = np.asarray(values[start:stop], dtype=np.float64)
                if keep is not None:
                    chunk = chunk[keep[start:stop]]
                totals = _accumulate(totals, chunk * scale)
        if totals is None or not totals["count"][0]:
            continue
        count = totals["count"][0]
        mean = totals["sum"] / count
        std = np.sqrt(np.maximum(totals["squares"] / count - mean ** 2, 0.0))
        found[name] = [{"count": int(count), "mean": float(m), "std": float(s), "min": float(lo), "max": float(hi)}
                       for m, s, lo, hi in zip(mean, std, totals["min"], totals["max"])]
    return found


def scale_warnings(statistics: dict[str, list[dict[str, float]]], limit: float = SCALE_LIMIT) -> list[str]:
    """One warning per modality with features whose ``|mean|`` or ``std`` exceeds ``limit``: they reach the
    model unscaled and slow or derail its training."""
    warnings = []
    for name, features in statistics.items():
        bad = [(i, f) for i, f in enumerate(features) if abs(f["mean"]) > limit or f["std"] > limit]
        if not bad:
            continue
        shown = "; ".join(f"feature {i}: mean {f['mean']:.4g}, std {f['std']:.4g}, range {f['min']:.4g}..{f['max']:.4g}"
                          for i, f in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        warnings.append(f"modality {name!r}: {len(bad)} of {len(features)} features badly scaled (|mean| or std "
                        f"beyond {limit:g}): {shown}{more}; standardize them (`mtmm data build` with scaling: "
                        "zscore, docs/tables.md) or set the modality's scale")
    return warnings


def statistics_rows(statistics: dict[str, list[dict[str, float]]]) -> list[list[str]]:
    """Table rows ``[modality, feature, count, mean, std, min, max]`` for ``mtmm data check --stats``."""
    return [[name, str(i), str(f["count"]), f"{f['mean']:.4g}", f"{f['std']:.4g}", f"{f['min']:.4g}",
             f"{f['max']:.4g}"] for name, features in statistics.items() for i, f in enumerate(features)]
