"""User data on disk as a data set: ``FolderDataset(path)`` (see docs/data.md).

``FolderDataset`` checks the folder (``mtmm_core.datacheck``), then serves batches read
from memory-mapped arrays, so a data set larger than memory trains. It has the
interface of the built-in data sets: ``modalities``, ``tasks`` and
``splits["train" | "validation" | "test"]`` with ``len()`` and ``batch(rows) -> Batch``.
It never opens a file outside the folder (``mtmm_core.datacheck.resolve_inside``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mtmm_core.contracts import Batch
from mtmm_core.datacheck import (  # noqa: F401  (Problem, check_dataset, is_data_folder: re-exported)
    CONFIG_FILE,
    DEFAULT_SPLITS,
    SPLITS,
    Problem,
    check_dataset,
    is_data_folder,
    missing_labels,
    resolve_inside,
    row_chunks,
    split_sizes,
)


class FolderSplit:
    """One split of a :class:`FolderDataset`: sample ``i`` is row ``indices[i]`` of the folder's arrays."""

    def __init__(self, name: str, indices: np.ndarray, source: "FolderDataset"):
        self.name, self.indices, self.source = name, indices, source

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, rows: np.ndarray | list[int]) -> Batch:
        """Tensors for ``rows`` of this split, read from the memory-mapped files."""
        return self.source.read(self.indices[np.asarray(rows, dtype=np.int64)])


def _as_float32(values: np.ndarray, scale: float) -> np.ndarray:
    """``values * scale`` as float32; float64 values are scaled before the cast, so a value that
    only fits float32 once scaled (``mtmm data check`` checks that) stays finite."""
    if scale == 1.0:
        return values.astype(np.float32)
    if values.dtype.kind == "f" and values.dtype.itemsize > 4:
        return (values * scale).astype(np.float32)
    scaled = values.astype(np.float32)
    scaled *= np.float32(scale)
    return scaled


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` reading the memory map in ascending row order (each row once)."""
    ordered, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(array[ordered])[inverse.reshape(-1)]


class FolderDataset:
    """A data folder (docs/data.md) as a data set: ``modalities``, ``tasks`` and ``splits``.

    The folder is checked first (``check=False`` skips the scan of every array's values but
    still checks dataset.yaml, the file names and the arrays' shapes); any problem raises one
    ValueError listing all of them. No file outside the folder is ever opened. Arrays stay
    memory-mapped: a batch reads only its rows. ``seed`` (a config's ``data.seed``) seeds a
    random split when dataset.yaml names no seed of its own.
    """

    def __init__(self, path: str | Path, *, check: bool = True, seed: int | None = None, **unknown: Any):
        if unknown:
            raise ValueError(f"data.{sorted(unknown)[0]}: not a parameter of a data folder "
                             f"(valid: check, seed); {path} is read as a data folder because it holds {CONFIG_FILE}")
        self.root = Path(path)
        self.seed = seed
        self._sequence_stats: dict[str, dict[str, int]] | None = None
        problems = check_dataset(self.root, scan=check)
        if problems:
            listed = "\n".join(f"  {problem}" for problem in problems)
            raise ValueError(f"{self.root} is not a valid data folder ({len(problems)} problem"
                             f"{'s' if len(problems) > 1 else ''}; `mtmm data check {self.root}` "
                             f"lists them too):\n{listed}")
        spec = yaml.safe_load(resolve_inside(self.root, CONFIG_FILE, CONFIG_FILE).read_text())
        self.description = spec.get("description", "")
        self.preprocessing = spec.get("preprocessing")  # how `mtmm data build` made it (docs/tables.md), or None
        self._modalities: dict[str, dict[str, Any]] = {}
        self.modalities: dict[str, dict[str, Any]] = {}
        for name, entry in spec["modalities"].items():
            opened = {key: self._load(entry[key], f"modalities.{name}.{key}")
                      for key in ("file", "values", "offsets", "present") if key in entry}
            opened["kind"], opened["scale"] = entry["kind"], float(entry.get("scale", 1.0))
            opened["ids"] = entry.get("dtype", "float32") == "int64"  # integer ids: [N, C], or [B, T] of a sequence
            self._modalities[name] = opened
            if entry["kind"] == "array":
                self.modalities[name] = {"kind": "array", "shape": list(opened["file"].shape[1:])}
                rows = opened["file"].shape[0]
            else:
                width = [] if opened["ids"] else [int(opened["values"].shape[1])]
                self.modalities[name] = {"kind": "sequence", "shape": [None, *width]}
                rows = len(opened["offsets"]) - 1
            if opened["ids"]:
                self.modalities[name]["dtype"] = "int64"
                if "vocab_sizes" in entry:
                    self.modalities[name]["vocab_sizes"] = [int(size) for size in entry["vocab_sizes"]]
        self.num_samples = rows
        self._labels: dict[str, np.ndarray] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        for name, entry in spec["tasks"].items():
            labels = self._labels[name] = self._load(entry["file"], f"tasks.{name}.file")
            info: dict[str, Any] = {"kind": entry["kind"]}
            if entry["kind"] == "classification":
                info["num_classes"] = int(entry["num_classes"])
            elif labels.ndim == 2:
                info["num_labels" if entry["kind"] == "binary" else "out_features"] = int(labels.shape[1])
            self.tasks[name] = info
        self.splits = {name: FolderSplit(name, indices, self)
                       for name, indices in self._split_indices(spec.get("splits", DEFAULT_SPLITS)).items()}

    def _load(self, name: str, field: str) -> np.ndarray:
        """Memory-map the file ``name`` that dataset.yaml names at ``field``; a ValueError naming
        the field and the name when it is not inside the folder (symlinks followed)."""
        return np.load(resolve_inside(self.root, name, field), mmap_mode="r", allow_pickle=False)

    def _split_indices(self, spec: dict) -> dict[str, np.ndarray]:
        if "file" in spec:
            codes = self._load(spec["file"], "splits.file")
            found: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
            for start, stop in row_chunks(len(codes), codes.dtype.itemsize):
                chunk = np.asarray(codes[start:stop])
                for code in found:
                    found[code].append(np.flatnonzero(chunk == code).astype(np.int64) + start)
            return {name: np.concatenate(found[code]) for code, name in enumerate(SPLITS)}
        sizes = split_sizes({"fractions": spec.get("fractions", DEFAULT_SPLITS["fractions"])}, self.num_samples)
        seed = spec.get("seed", 0 if self.seed is None else self.seed)
        order = np.random.default_rng(seed).permutation(self.num_samples)
        bounds = np.cumsum([0, sizes["train"], sizes["validation"], sizes["test"]])
        return {name: np.sort(order[bounds[i]:bounds[i + 1]]) for i, name in enumerate(SPLITS)}

    def read(self, rows: np.ndarray) -> Batch:
        """The batch of the given rows of the folder (not of a split)."""
        rows = np.asarray(rows, dtype=np.int64)
        inputs, lengths, present, targets, task_masks = {}, {}, {}, {}, {}
        for name, opened in self._modalities.items():
            flags = np.ones(len(rows), dtype=bool)
            ids = opened["ids"]
            if opened["kind"] == "array":
                rows_read = _take(opened["file"], rows)
                values = rows_read.astype(np.int64) if ids else _as_float32(rows_read, opened["scale"])
            else:
                offsets = opened["offsets"]
                starts, ends = _take(offsets, rows).astype(np.int64), _take(offsets, rows + 1).astype(np.int64)
                sizes = ends - starts
                frames = opened["values"]
                longest = max(1, int(sizes.max(initial=0)))
                if ids:  # [B, T] ids padded with 0
                    values = np.zeros((len(rows), longest), dtype=np.int64)
                    for i, (start, size) in enumerate(zip(starts, sizes)):
                        values[i, :size] = np.asarray(frames[start:start + size, 0])
                else:
                    values = np.zeros((len(rows), longest, frames.shape[1]), dtype=np.float32)
                    for i, (start, size) in enumerate(zip(starts, sizes)):
                        values[i, :size] = _as_float32(np.asarray(frames[start:start + size]), opened["scale"])
                lengths[name] = torch.from_numpy(sizes)
                flags &= sizes > 0
            if "present" in opened:
                flags &= _take(opened["present"], rows).astype(bool)
            inputs[name], present[name] = torch.from_numpy(values), torch.from_numpy(flags)
        for task, labels in self._labels.items():
            kind = self.tasks[task]["kind"]
            raw = _take(labels, rows)
            missing = missing_labels(raw, kind)
            if kind == "classification":
                target = np.where(missing, 0, np.nan_to_num(raw)).astype(np.int64)
            else:
                target = np.nan_to_num(raw.astype(np.float32), nan=0.0)
                if raw.dtype.kind in "iu":
                    target[raw == -1] = 0.0
            targets[task], task_masks[task] = torch.from_numpy(target), torch.from_numpy(~missing)
        return Batch(inputs, lengths, targets, present, task_masks)

    def sequence_stats(self) -> dict[str, dict[str, int]]:
        """Per sequence modality ``{"shortest", "longest", "longest_row"}`` (lengths in frames, the
        row of the folder holding the longest), from one chunked scan of the offsets (cached)."""
        if self._sequence_stats is None:
            stats = {}
            for name, opened in self._modalities.items():
                if opened["kind"] != "sequence":
                    continue
                offsets = opened["offsets"]
                low, high, row = None, 0, 0
                for start, stop in row_chunks(len(offsets) - 1, 2 * offsets.dtype.itemsize):
                    sizes = np.diff(np.asarray(offsets[start:stop + 1]).astype(np.int64))
                    low = int(sizes.min()) if low is None else min(low, int(sizes.min()))
                    if int(sizes.max()) > high:
                        high, row = int(sizes.max()), start + int(sizes.argmax())
                stats[name] = {"shortest": low or 0, "longest": high, "longest_row": row}
            self._sequence_stats = stats
        return self._sequence_stats

    def longest_sequences(self) -> dict[str, int]:
        """The length of the longest sample of each sequence modality, in frames."""
        return {name: stats["longest"] for name, stats in self.sequence_stats().items()}

    def summary(self) -> dict[str, Any]:
        """Samples, modalities (sequences with their shortest and longest length), tasks and split sizes."""
        modalities = {}
        stats = self.sequence_stats()
        for name, info in self.modalities.items():
            modalities[name] = dict(info)
            if name in stats:
                modalities[name]["lengths"] = [stats[name]["shortest"], stats[name]["longest"]]
        return {"path": str(self.root), "samples": self.num_samples, "modalities": modalities,
                "tasks": self.tasks, "splits": {name: len(split) for name, split in self.splits.items()}}


def summary_line(summary: dict[str, Any]) -> str:
    """One line for ``mtmm data check``: samples, modalities, tasks and split sizes."""
    modalities = []
    for name, info in summary["modalities"].items():
        shape = ", ".join("T" if size is None else str(size) for size in info["shape"])
        extra = f", T {info['lengths'][0]}..{info['lengths'][1]}" if "lengths" in info else ""
        if info.get("dtype") == "int64":  # ids: their vocabulary sizes
            extra += ", ids" + (f" < {'/'.join(map(str, info['vocab_sizes']))}" if info.get("vocab_sizes") else "")
        modalities.append(f"{name} ({info['kind']} [{shape}]{extra})")
    tasks = [f"{name} ({info['kind']}" + (f", {info['num_classes']} classes" if "num_classes" in info else "") + ")"
             for name, info in summary["tasks"].items()]
    splits = ", ".join(f"{name} {size}" for name, size in summary["splits"].items())
    return (f"{summary['path']}: ok, {summary['samples']} samples; modalities {', '.join(modalities)}; "
            f"tasks {', '.join(tasks)}; splits {splits}")
