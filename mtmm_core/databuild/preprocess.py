"""The preprocessing of each feature kind, learned from the training rows only (docs/tables.md).

``fit(name, spec, raw, train)`` learns from the rows where ``train`` (bool ``[N]``) holds and returns
the fitted values as plain YAML (lists, numbers, strings): stored in dataset.yaml's
``preprocessing`` and copied into a run folder, so that ``mtmm predict`` on new raw rows applies
exactly the same. ``apply(spec, fitted, raw)`` turns the raw cells of any rows into an
:class:`Encoded` modality of the data-folder format (docs/data.md).

- number / vector: per column ``(x - center) / scale``; ``zscore``: the training mean and population
  standard deviation (ddof 0), ``minmax``: the training minimum and ``max - min``, ``none``: 0 and 1
  (a constant column gets scale 1). A missing value takes the training ``mean`` or ``median``, the
  ``constant`` ``fill``, or makes the modality ``absent`` for that row.
- category: per column a vocabulary of the training values seen at least ``min_count`` times, sorted;
  id 0 is the unknown bucket (values not in it, and missing ones unless ``missing: absent``), ids 1..V.
- set: multi-hot ``[1 + V]`` over the training vocabulary; slot 0 marks an unknown item.
- text: byte ids (``byte + 1``, the built-in ``text`` encoder's) cut at ``max_len``, lowered to the
  longest training text; or the ids of a Hugging Face tokenizer (``tokenizer: PATH``).
- image / audio / sequence: per channel (image), mel band (audio) or feature (sequence) the
  training mean and standard deviation (``normalize: dataset``; ``imagenet``: ImageNet's; ``none``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtmm_core.databuild import decode
from mtmm_core.databuild.readers import Raw
from mtmm_core.errors import UsageError


@dataclass
class Encoded:
    """One modality in the data-folder format: ``kind`` array (``values [N, ...]``) or sequence
    (``values [total, F]`` and ``offsets [N + 1]``); ``present`` bool ``[N]`` (None: always present);
    ``dtype`` float32 or int64 (ids, with ``vocab_sizes``)."""

    kind: str
    values: np.ndarray
    offsets: np.ndarray | None = None
    present: np.ndarray | None = None
    dtype: str = "float32"
    vocab_sizes: list[int] = field(default_factory=list)


def _train_rows(name: str, spec: dict, rows: np.ndarray) -> np.ndarray:
    if not len(rows):
        raise UsageError(f"feature {name!r} (column {spec['columns'][0]!r}, kind {spec['kind']}): no training row "
                         "has a value, so there is nothing to learn its preprocessing from")
    return rows


def _center_scale(values: np.ndarray, scaling: str) -> tuple[np.ndarray, np.ndarray]:
    """Per column of float64 ``values [n, D]``: ``(center, scale)`` of the scaling."""
    if scaling == "zscore":
        center, scale = values.mean(axis=0), values.std(axis=0)
    elif scaling == "minmax":
        center, scale = values.min(axis=0), values.max(axis=0) - values.min(axis=0)
    else:
        center, scale = np.zeros(values.shape[1]), np.ones(values.shape[1])
    return center, np.where(scale > 0, scale, 1.0)


def fit(name: str, spec: dict, raw: Raw, train: np.ndarray) -> dict[str, Any]:
    """The fitted preprocessing of feature ``name`` from its raw cells on the rows where ``train`` holds."""
    kind = spec["kind"]
    if kind in ("number", "vector"):
        matrix, missing = raw.values, raw.missing
        center, scale, fill = [], [], []
        for column in range(matrix.shape[1]):
            known = matrix[train & ~missing[:, column], column]
            _train_rows(name, {**spec, "columns": [spec["columns"][min(column, len(spec["columns"]) - 1)]]}, known)
            c, s = _center_scale(known[:, None], spec["scaling"])
            center.append(float(c[0]))
            scale.append(float(s[0]))
            fill.append(float({"mean": np.mean, "median": np.median}.get(spec["missing"], lambda _: spec["fill"])(known)))
        return {"center": center, "scale": scale, "fill": fill}
    if kind == "category":
        vocabularies = []
        for column in raw.values:
            counts = Counter(cell for cell, chosen in zip(column, train) if chosen and cell is not None)
            vocabularies.append(sorted(value for value, count in counts.items() if count >= spec["min_count"]))
        return {"vocabularies": vocabularies}
    if kind == "set":
        counts = Counter(item for items, chosen in zip(raw.values, train) if chosen and items for item in items)
        return {"vocabulary": sorted(item for item, count in counts.items() if count >= spec["min_count"])}
    if kind == "text":
        if spec["tokenizer"]:
            return {"max_len": spec["max_len"], "vocab_size": len(decode.hf_tokenizer(spec["tokenizer"]))}
        lengths = [len(text.encode("utf-8")) for text, chosen in zip(raw.values, train) if chosen and text is not None]
        _train_rows(name, spec, np.asarray(lengths))
        return {"max_len": int(min(spec["max_len"], max(max(lengths), 1))), "vocab_size": 257}
    if kind == "image":
        channels = raw.values.shape[1]
        if spec["normalize"] == "imagenet":
            mean, std = IMAGENET(channels)
        elif spec["normalize"] == "none":
            mean, std = [0.0] * channels, [1.0] * channels
        else:
            chosen = raw.values[_train_rows(name, spec, np.flatnonzero(train & ~raw.missing))].astype(np.float64)
            mean = chosen.mean(axis=(0, 2, 3)).tolist()
            std = [s if s > 0 else 1.0 for s in chosen.std(axis=(0, 2, 3)).tolist()]
        return {"mean": mean, "std": std}
    # audio, sequence: per feature of the frames
    frames = [raw.values[row] for row in np.flatnonzero(train & ~raw.missing)]
    frames = [f for f in frames if len(f)]
    _train_rows(name, spec, np.asarray(frames, dtype=object))
    widths = {f.shape[1] for f in frames}
    if len(widths) > 1:
        raise UsageError(f"feature {name!r} (column {spec['columns'][0]!r}, kind {kind}): frames of different "
                         f"widths {sorted(widths)} in the training rows")
    joined = np.concatenate(frames).astype(np.float64)
    mode = spec.get("scaling", spec.get("normalize"))
    if kind == "audio" and spec.get("feature_extractor"):
        mode = "none"
    center, scale = _center_scale(joined, "zscore" if mode in ("zscore", "dataset") else mode)
    return {"center": center.tolist(), "scale": scale.tolist(), "width": int(joined.shape[1])}


def IMAGENET(channels: int) -> tuple[list[float], list[float]]:  # noqa: N802 - a table of constants
    """ImageNet's per-channel mean and std (their averages for a grey image)."""
    if channels == 3:
        return list(decode.IMAGENET_MEAN), list(decode.IMAGENET_STD)
    return [float(np.mean(decode.IMAGENET_MEAN))], [float(np.mean(decode.IMAGENET_STD))]


def apply(name: str, spec: dict, fitted: dict, raw: Raw) -> Encoded:
    """The modality of feature ``name`` for every row of ``raw``, with the ``fitted`` preprocessing."""
    kind = spec["kind"]
    count = len(raw.missing)
    if kind in ("number", "vector"):
        matrix, missing = raw.values, raw.missing
        if matrix.shape[1] != len(fitted["center"]):
            raise UsageError(f"feature {name!r} (kind {kind}): rows have {matrix.shape[1]} values, but its "
                             f"preprocessing was learned for {len(fitted['center'])}")
        center, scale = np.asarray(fitted["center"]), np.asarray(fitted["scale"])
        absent = spec["missing"] == "absent"
        filled = np.where(missing, center if absent else np.asarray(fitted["fill"]), matrix)
        present = ~missing.any(axis=1) if absent else None
        return Encoded("array", ((filled - center) / scale).astype(np.float32), present=present)
    if kind == "category":
        vocabularies = fitted["vocabularies"]
        ids = np.zeros((count, len(vocabularies)), dtype=np.int64)
        for column, (cells, vocabulary) in enumerate(zip(raw.values, vocabularies)):
            index = {value: i + 1 for i, value in enumerate(vocabulary)}
            ids[:, column] = [index.get(cell, 0) for cell in cells]
        present = ~raw.missing.any(axis=1) if spec["missing"] == "absent" else None
        return Encoded("array", ids, present=present, dtype="int64", vocab_sizes=[len(v) + 1 for v in vocabularies])
    if kind == "set":
        index = {item: i + 1 for i, item in enumerate(fitted["vocabulary"])}
        hot = np.zeros((count, len(index) + 1), dtype=np.float32)
        for row, items in enumerate(raw.values):
            for item in items or []:
                hot[row, index.get(item, 0)] = 1.0
        present = ~raw.missing if spec["missing"] == "absent" else None
        return Encoded("array", hot, present=present)
    if kind == "text":
        if spec["tokenizer"]:
            tokenizer = decode.hf_tokenizer(spec["tokenizer"])  # its own ids, special tokens included
            given = [text for text in raw.values if text is not None]
            encoded = iter(tokenizer(given, truncation=True, max_length=fitted["max_len"])["input_ids"]
                           if given else [])
            pieces = [np.zeros(0, np.int64) if text is None else np.asarray(next(encoded), dtype=np.int64)
                      for text in raw.values]
        else:
            pieces = [np.zeros(0, np.int64) if text is None else decode.byte_ids(text, fitted["max_len"])
                      for text in raw.values]
        return _sequence(pieces, np.int64, [fitted["vocab_size"]])
    if kind == "image":
        mean = np.asarray(fitted["mean"], dtype=np.float32)[None, :, None, None]
        std = np.asarray(fitted["std"], dtype=np.float32)[None, :, None, None]
        values = (raw.values - mean) / std
        values[raw.missing] = 0.0
        return Encoded("array", values.astype(np.float32), present=~raw.missing)
    center, scale = np.asarray(fitted["center"]), np.asarray(fitted["scale"])
    pieces = []
    for row, frames in enumerate(raw.values):
        if frames is None or not len(frames):
            pieces.append(np.zeros((0, fitted["width"]), np.float32))
            continue
        if frames.shape[1] != fitted["width"]:
            raise UsageError(f"feature {name!r} (column {spec['columns'][0]!r}, kind {kind}), row {row}: frames "
                             f"of {frames.shape[1]} values, but its preprocessing was learned for {fitted['width']}")
        pieces.append(((frames - center) / scale).astype(np.float32))
    return _sequence(pieces, np.float32, [])


def _sequence(pieces: list[np.ndarray], dtype: Any, vocab_sizes: list[int]) -> Encoded:
    lengths = [len(piece) for piece in pieces]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if dtype == np.int64:
        values = (np.concatenate(pieces) if pieces else np.zeros(0, np.int64)).astype(np.int64).reshape(-1, 1)
        return Encoded("sequence", values, offsets, dtype="int64", vocab_sizes=vocab_sizes)
    width = pieces[0].shape[1] if pieces else 1
    values = np.concatenate(pieces).astype(np.float32).reshape(-1, width) if pieces else np.zeros((0, 1), np.float32)
    return Encoded("sequence", values, offsets)
