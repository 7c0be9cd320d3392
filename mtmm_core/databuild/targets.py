"""Task targets of a table: class names, binary flags, regression values (docs/tables.md), and the split.

``fit_target`` learns a classification task's classes (the schema's ``classes``, else every label of
the table, sorted); ``encode_target`` gives the label file of the data-folder format: int64 ``[N]``
with -1 for a missing label (classification), float32 ``[N]`` with NaN (binary, regression).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtmm_core.databuild.readers import category_key, is_missing
from mtmm_core.databuild.schema import SPLIT_NAMES
from mtmm_core.errors import UsageError

TRUE, FALSE = {"1", "true", "yes", "y", "t"}, {"0", "false", "no", "n", "f"}


def _sorted_classes(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=lambda name: (float(name), name))
    except ValueError:
        return sorted(names)


def fit_target(name: str, spec: dict, table: Any) -> dict:
    """The target's spec with what the table teaches: a classification task's ``classes`` (strings)."""
    spec = dict(spec)
    if spec["kind"] == "classification":
        if spec.get("classes") is not None:
            spec["classes"] = [category_key(c) for c in spec["classes"]]
        else:
            seen = {category_key(c) for c in table[spec["column"]].tolist() if not is_missing(c)}
            if len(seen) < 2:
                raise UsageError(f"target {name!r} (column {spec['column']!r}, kind classification): "
                                 f"{len(seen)} class(es) in the table ({sorted(seen)}); a classification "
                                 "task needs at least 2 (or give classes: [...] in the schema)")
            spec["classes"] = _sorted_classes(seen)
    if spec["kind"] == "binary" and spec.get("positive") is not None:
        spec["positive"] = category_key(spec["positive"])
    return spec


def encode_target(name: str, spec: dict, table: Any, *, strict: bool = True) -> np.ndarray:
    """The labels ``[N]`` of target ``name`` (fitted ``spec``). ``strict``: a label outside the classes or
    not a number fails, naming the row; otherwise (new rows to predict) it counts as missing."""
    cells = table[spec["column"]].tolist()
    kind = spec["kind"]

    def fail(row: int, message: str) -> UsageError:
        return UsageError(f"column {spec['column']!r} (target {name!r}, kind {kind}), row {row}: {message}")

    if kind == "classification":
        index = {c: i for i, c in enumerate(spec["classes"])}
        labels = np.full(len(cells), -1, dtype=np.int64)
        for row, cell in enumerate(cells):
            if is_missing(cell):
                continue
            key = category_key(cell)
            if key not in index and strict:
                raise fail(row, f"class {key!r} is not one of the schema's classes {spec['classes']}")
            labels[row] = index.get(key, -1)
        return labels
    labels = np.full(len(cells), np.nan, dtype=np.float32)
    for row, cell in enumerate(cells):
        if is_missing(cell):
            continue
        key = category_key(cell).lower()
        if kind == "binary":
            if spec.get("positive") is not None:
                labels[row] = float(category_key(cell) == spec["positive"])
            elif key in TRUE or key in FALSE:
                labels[row] = float(key in TRUE)
            elif strict:
                raise fail(row, f"{cell!r} is not a binary label (0/1, true/false, yes/no; or give positive: VALUE)")
        else:
            try:
                labels[row] = float(cell)
            except (TypeError, ValueError) as error:
                if strict:
                    raise fail(row, f"{cell!r} is not a number") from error
            if strict and not np.isfinite(labels[row]):
                raise fail(row, f"{cell!r} is not a finite number")
    return labels


def split_codes(spec: dict, table: Any) -> np.ndarray:
    """Split codes int8 ``[N]`` (0 train, 1 validation, 2 test): from the split column (train /
    validation / test, or 0 / 1 / 2), or a random split with the schema's seed and fractions."""
    from mtmm_core.datacheck import split_sizes

    count = len(table)
    if "column" in spec:
        codes = np.zeros(count, dtype=np.int8)
        valid = {**SPLIT_NAMES, **{str(code): code for code in SPLIT_NAMES.values()}}
        for row, cell in enumerate(table[spec["column"]].tolist()):
            key = "" if is_missing(cell) else category_key(cell).lower()
            if key not in valid:
                raise UsageError(f"column {spec['column']!r} (the split), row {row}: {cell!r} is not a split; "
                                 "expected train, validation or test (or 0, 1, 2)")
            codes[row] = valid[key]
    else:
        total = sum(spec["fractions"])
        sizes = split_sizes({"fractions": [f / total for f in spec["fractions"]]}, count)
        order = np.random.default_rng(spec["seed"]).permutation(count)
        codes = np.zeros(count, dtype=np.int8)
        codes[order[sizes["train"]:sizes["train"] + sizes["validation"]]] = 1
        codes[order[sizes["train"] + sizes["validation"]:]] = 2
    if not (codes == 0).any():
        raise UsageError("the split has no training row: the preprocessing is learned from the training rows")
    return codes
