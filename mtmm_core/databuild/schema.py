"""The schema of a table (docs/tables.md): which columns are features (and of what kind), which are targets.

``parse_schema(schema)`` takes a mapping or a YAML file and returns the normalised schema, every
default filled in; an unknown key or kind, a bad value or a missing column fails with one
``SchemaError`` naming the field (``features.<name>.<key>``), the valid values and the closest one.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtmm_core.errors import UsageError

TOP_KEYS = ("features", "targets", "split", "description")
SPLIT_NAMES = {"train": 0, "validation": 1, "test": 2}
COMMON = {"kind": None, "column": None, "columns": None}
#: Every feature kind with its keys and their defaults (None: no default; the kind decides).
FEATURE_KEYS: dict[str, dict[str, Any]] = {
    "number": {"scaling": "zscore", "missing": "mean", "fill": 0.0},
    "vector": {"separator": None, "scaling": "zscore", "missing": "absent", "fill": 0.0},
    "category": {"min_count": 1, "missing": "unknown"},
    "set": {"separator": "|", "min_count": 1, "missing": "empty"},
    "text": {"max_len": 256, "tokenizer": None, "missing": "absent"},
    "image": {"size": 32, "resize": None, "channels": 3, "normalize": "dataset", "root": None, "missing": "absent"},
    "audio": {"sample_rate": 16000, "n_mels": 40, "n_fft": 400, "hop": 160, "normalize": "dataset",
              "feature_extractor": None, "root": None, "missing": "absent"},
    "sequence": {"separator": ";", "feature_separator": None, "scaling": "zscore", "missing": "absent"},
}
CHOICES = {  # key -> valid values, per kind where they differ
    "scaling": ("zscore", "minmax", "none"),
    "normalize": ("dataset", "imagenet", "none"),
    ("number", "missing"): ("mean", "median", "constant", "absent"),
    ("vector", "missing"): ("mean", "constant", "absent"),
    ("category", "missing"): ("unknown", "absent"),
    ("set", "missing"): ("empty", "absent"),
    "missing": ("absent",),
    "channels": (1, 3),
}
MULTI_COLUMN = ("number", "category")  # kinds that may group several columns in one modality
TARGET_KEYS = {
    "classification": {"classes": None},
    "binary": {"positive": None},
    "regression": {},
}


class SchemaError(UsageError):
    """A schema that cannot be used; the message names the field and what would be valid."""

    def __init__(self, field: str, message: str):
        super().__init__(f"schema: {field}: {message}" if field else f"schema: {message}")
        self.field = field


def _close(name: Any, valid) -> str:
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _unknown_keys(entry: dict, valid, field: str) -> None:
    for key in entry:
        if key not in valid:
            raise SchemaError(f"{field}.{key}", f"unknown key{_close(key, valid)} Valid keys: {', '.join(valid)}")


def read_schema_file(schema: str | Path | dict) -> dict:
    """The schema mapping of ``schema`` (a mapping, or the path of a YAML file)."""
    if isinstance(schema, dict):
        return copy.deepcopy(schema)
    path = Path(schema)
    if not path.is_file():
        raise SchemaError("", f"{path}: no such schema file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SchemaError("", f"{path} is not valid YAML: {error}") from error
    if not isinstance(loaded, dict):
        raise SchemaError("", f"{path}: expected a mapping with features and targets, got {type(loaded).__name__}")
    return loaded


def parse_schema(schema: str | Path | dict, columns: list[str] | None = None) -> dict:
    """The normalised schema: ``{"features": {name: {kind, columns, ...}}, "targets": {name: {kind, column,
    ...}}, "split": {...}, "description": str}``. ``columns`` (the table's) are checked when given:
    a feature or target naming a column the table lacks fails, with the closest column."""
    raw = read_schema_file(schema)
    _unknown_keys(raw, TOP_KEYS, "")
    features, targets = raw.get("features"), raw.get("targets")
    if not isinstance(features, dict) or not features:
        raise SchemaError("features", f"expected a mapping of feature names to {{kind: {' | '.join(FEATURE_KEYS)}, "
                                      "column: ...}}, at least one")
    if not isinstance(targets, dict) or not targets:
        raise SchemaError("targets", f"expected a mapping of target names to {{kind: {' | '.join(TARGET_KEYS)}, "
                                     "column: ...}}, at least one")
    parsed = {"features": {}, "targets": {}, "description": str(raw.get("description", ""))}
    for name, entry in features.items():
        parsed["features"][str(name)] = _feature(str(name), entry, columns)
    for name, entry in targets.items():
        parsed["targets"][str(name)] = _target(str(name), entry, columns)
    parsed["split"] = _split(raw.get("split", {"seed": 0, "fractions": [0.8, 0.1, 0.1]}), columns)
    return parsed


def _column(value: Any, field: str, columns: list[str] | None) -> str:
    if not isinstance(value, str) or not value:
        raise SchemaError(field, f"expected a column name, got {value!r}")
    if columns is not None and value not in columns:
        raise SchemaError(field, f"the table has no column {value!r}{_close(value, columns)} "
                                 f"Its columns: {', '.join(map(str, columns))}")
    return value


def _kind(field: str, entry: Any, kinds: Mapping[str, Any]) -> str:
    """The ``kind`` of the schema entry at ``field``, one of ``kinds``; a :class:`SchemaError` naming the
    field, the close kinds and the valid ones otherwise."""
    if not isinstance(entry, dict):
        raise SchemaError(field, f"expected a mapping with kind ({' | '.join(kinds)}) and column, got {entry!r}")
    kind = entry.get("kind")
    if kind not in kinds:
        message = "missing" if kind is None else f"unknown kind {kind!r}{_close(kind, kinds)}"
        raise SchemaError(f"{field}.kind", f"{message}; valid kinds: {', '.join(kinds)}")
    return kind


def _feature(name: str, entry: Any, columns: list[str] | None) -> dict:
    field = f"features.{name}"
    kind = _kind(field, entry, FEATURE_KEYS)
    valid = {**COMMON, **FEATURE_KEYS[kind]}
    _unknown_keys(entry, valid, field)
    parsed = {key: entry.get(key, default) for key, default in FEATURE_KEYS[kind].items()}
    parsed["kind"] = kind
    if ("column" in entry) == ("columns" in entry):
        raise SchemaError(field, "give either column: NAME or columns: [NAME, ...]")
    if "columns" in entry:
        if kind not in MULTI_COLUMN:
            raise SchemaError(f"{field}.columns", f"a {kind} feature reads one column: give column: NAME "
                                                  f"(only {' and '.join(MULTI_COLUMN)} features group columns)")
        names = entry["columns"]
        if not isinstance(names, list) or not names:
            raise SchemaError(f"{field}.columns", f"expected a non-empty list of column names, got {names!r}")
        parsed["columns"] = [_column(c, f"{field}.columns", columns) for c in names]
    else:
        parsed["columns"] = [_column(entry["column"], f"{field}.column", columns)]
    for key, value in parsed.items():
        choices = CHOICES.get((kind, key), CHOICES.get(key))
        if key in entry and choices is not None and value not in choices:
            raise SchemaError(f"{field}.{key}", f"unknown value {value!r}{_close(value, choices)} "
                                                f"Valid values: {', '.join(map(str, choices))}")
    for key in ("min_count", "max_len", "sample_rate", "n_mels", "n_fft", "hop"):
        if key in parsed and (not isinstance(parsed[key], int) or isinstance(parsed[key], bool) or parsed[key] < 1):
            raise SchemaError(f"{field}.{key}", f"expected an integer >= 1, got {parsed[key]!r}")
    if kind == "image":
        parsed["size"] = _pair(parsed["size"], f"{field}.size")
        resize = parsed["resize"]
        if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool) or resize < 1):
            raise SchemaError(f"{field}.resize", f"expected the shorter side in pixels (an integer >= 1), got {resize!r}")
    if "fill" in parsed and (not isinstance(parsed["fill"], (int, float)) or isinstance(parsed["fill"], bool)):
        raise SchemaError(f"{field}.fill", f"expected a number (the value of a missing cell), got {parsed['fill']!r}")
    for key in ("tokenizer", "feature_extractor", "root"):
        if parsed.get(key) is not None:
            parsed[key] = str(parsed[key])
    return parsed


def _pair(value: Any, field: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return [value, value]
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return list(value)
    raise SchemaError(field, f"expected a size in pixels, or [height, width], got {value!r}")


def _target(name: str, entry: Any, columns: list[str] | None) -> dict:
    field = f"targets.{name}"
    kind = _kind(field, entry, TARGET_KEYS)
    _unknown_keys(entry, ("kind", "column", *TARGET_KEYS[kind]), field)
    if "column" not in entry:
        raise SchemaError(f"{field}.column", "missing: the column holding the target")
    parsed = {"kind": kind, "column": _column(entry["column"], f"{field}.column", columns)}
    for key, default in TARGET_KEYS[kind].items():
        parsed[key] = entry.get(key, default)
    classes = parsed.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) < 2 or len(set(map(str, classes))) != len(classes)):
        raise SchemaError(f"{field}.classes", f"expected a list of at least 2 distinct classes, got {classes!r}")
    return parsed


def _split(entry: Any, columns: list[str] | None) -> dict:
    if not isinstance(entry, dict):
        raise SchemaError("split", f"expected {{column: NAME}} or {{seed: 0, fractions: [0.8, 0.1, 0.1]}}, got {entry!r}")
    _unknown_keys(entry, ("column", "seed", "fractions"), "split")
    if "column" in entry:
        if len(entry) > 1:
            raise SchemaError("split", "give either column (train / validation / test per row) or seed and fractions")
        return {"column": _column(entry["column"], "split.column", columns)}
    seed, fractions = entry.get("seed", 0), entry.get("fractions", [0.8, 0.1, 0.1])
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SchemaError("split.seed", f"expected an integer >= 0, got {seed!r}")
    if (not isinstance(fractions, list) or len(fractions) != 3
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0 for f in fractions)
            or sum(fractions) <= 0):
        raise SchemaError("split.fractions", f"expected three fractions >= 0 (train, validation, test), got {fractions!r}")
    return {"seed": seed, "fractions": [float(f) for f in fractions]}
