"""Reading a feature's cells into raw arrays, before anything is learned (``preprocess`` fits and applies).

``read_feature(name, spec, table, base)`` returns a :class:`Raw`: for ``number``/``vector`` a float64
``[N, D]`` matrix with a ``[N, D]`` missing mask; for ``category`` the cells as strings (None when
missing); for ``set`` a list of item lists; for ``text`` the strings; for ``image`` decoded pixels
``[N, C, H, W]``; for ``audio`` and ``sequence`` a list of ``[T, F]`` frame arrays. A cell that cannot
be read fails with a ``UsageError`` naming the column, the row (0-based, of the table) and the kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtmm_core.databuild import decode
from mtmm_core.errors import UsageError


@dataclass
class Raw:
    """A feature's cells, read: ``values`` (by kind, see the module) and ``missing`` bool ``[N]`` or ``[N, D]``."""

    values: Any
    missing: np.ndarray


def is_missing(cell: Any) -> bool:
    """A missing cell: None, NaN (pandas' NA included), or a string that is empty once stripped."""
    if cell is None:
        return True
    if isinstance(cell, str):
        return not cell.strip()
    if isinstance(cell, (list, tuple, np.ndarray)):
        return False
    try:
        import pandas

        return bool(pandas.isna(cell))
    except ImportError:
        return isinstance(cell, float) and cell != cell


def category_key(cell: Any) -> str:
    """A category's name: a whole float (``3.0``, as CSV reads an integer column with gaps) as ``"3"``."""
    if isinstance(cell, (float, np.floating)) and float(cell).is_integer():
        return str(int(cell))
    if isinstance(cell, (np.integer, np.bool_)):
        return str(cell.item())
    return str(cell).strip()


class _Where:
    def __init__(self, name: str, kind: str, column: str):
        self.name, self.kind, self.column = name, kind, column

    def fail(self, row: int, message: str) -> UsageError:
        return UsageError(f"column {self.column!r} (feature {self.name!r}, kind {self.kind}), row {row}: {message}")


def _numbers(text: str, separator: str | None) -> list[float]:
    text = text.strip().strip("[]()")
    parts = re.split(r"[,\s]+", text) if separator is None else text.split(separator)
    return [float(part) for part in parts if part.strip()]


def _vector(cell: Any, separator: str | None) -> np.ndarray:
    if isinstance(cell, str):
        return np.asarray(_numbers(cell, separator), dtype=np.float64)
    return np.asarray(cell, dtype=np.float64).reshape(-1)


def _frames(cell: Any, separator: str, feature_separator: str | None) -> np.ndarray:
    if isinstance(cell, str):
        rows = [_numbers(frame, feature_separator) for frame in cell.split(separator) if frame.strip()]
    else:
        rows = [np.asarray(frame, dtype=np.float64).reshape(-1) for frame in cell]
    widths = {len(frame) for frame in rows}
    if len(widths) > 1:
        raise ValueError(f"frames of different widths {sorted(widths)}")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


def resolve_path(cell: Any, root: Path) -> Path:
    """The file a path cell names: absolute, or relative to ``root`` (the schema's root, else the table's folder)."""
    path = Path(str(cell).strip()).expanduser()
    return path if path.is_absolute() else root / path


def read_feature(name: str, spec: dict, table: Any, base: Path) -> Raw:
    """The raw cells of feature ``name`` (normalised ``spec``) of the pandas DataFrame ``table``; paths of
    image and audio cells are relative to ``spec["root"]`` (itself relative to ``base``) or ``base``."""
    kind, columns = spec["kind"], spec["columns"]
    where = _Where(name, kind, columns[0])
    if kind in ("number", "category"):
        return _read_columns(name, spec, table)
    cells = table[columns[0]].tolist()
    missing = np.array([is_missing(cell) for cell in cells], dtype=bool)
    root = base if spec.get("root") is None else (base / spec["root"] if not Path(spec["root"]).is_absolute()
                                                   else Path(spec["root"]))
    values: list[Any] = []
    for row, cell in enumerate(cells):
        if missing[row]:
            values.append(None)
            continue
        try:
            if kind == "vector":
                values.append(_vector(cell, spec["separator"]))
            elif kind == "set":
                items = cell.split(spec["separator"]) if isinstance(cell, str) else list(cell)
                values.append(sorted({category_key(item) for item in items if not is_missing(item)}))
            elif kind == "text":
                values.append(str(cell))
            elif kind == "sequence":
                values.append(_frames(cell, spec["separator"], spec["feature_separator"]))
            elif kind == "image":
                values.append(decode.load_image(resolve_path(cell, root), spec["size"], spec["resize"],
                                                 spec["channels"]))
            else:  # audio
                values.append(_audio_frames(resolve_path(cell, root), spec))
        except UsageError:
            raise
        except Exception as error:  # noqa: BLE001 - any cell that cannot be read: name the row and the column
            raise where.fail(row, f"cannot read {cell!r}: {error}") from error
    if kind == "vector":
        return _vector_matrix(where, values, missing)
    if kind == "image":
        shape = next((v.shape for v in values if v is not None), (spec["channels"], *spec["size"]))
        pixels = np.zeros((len(values), *shape), dtype=np.float32)
        for row, value in enumerate(values):
            if value is not None:
                pixels[row] = value
        return Raw(pixels, missing)
    return Raw(values, missing)


def _audio_frames(path: Path, spec: dict) -> np.ndarray:
    samples = decode.load_audio(path, spec["sample_rate"])
    if spec.get("feature_extractor"):
        extractor = decode.hf_feature_extractor(spec["feature_extractor"])
        out = extractor(samples, sampling_rate=spec["sample_rate"], return_tensors="np")
        features = np.asarray(out.get("input_features", out.get("input_values")))[0]
        return features.T if features.ndim == 2 else features.reshape(-1, 1)
    return decode.log_mel(samples, spec["sample_rate"], spec["n_fft"], spec["hop"], spec["n_mels"])


def _vector_matrix(where: _Where, values: list, missing: np.ndarray) -> Raw:
    widths = {len(v) for v in values if v is not None}
    if len(widths) > 1:
        first = next(row for row, v in enumerate(values) if v is not None and len(v) != len(values[missing.argmin()]))
        raise where.fail(first, f"vectors of different lengths {sorted(widths)}; every vector needs the same length")
    width = widths.pop() if widths else 1
    matrix = np.zeros((len(values), width))
    for row, value in enumerate(values):
        if value is not None:
            matrix[row] = value
    bad = ~missing[:, None] & ~np.isfinite(matrix)
    miss = np.repeat(missing[:, None], width, axis=1) | bad  # NaN inside a vector: that value is missing
    return Raw(matrix, miss)


def _read_columns(name: str, spec: dict, table: Any) -> Raw:
    import pandas

    kind, columns = spec["kind"], spec["columns"]
    count = len(table)
    if kind == "category":
        cells = [[None if is_missing(c) else category_key(c) for c in table[column].tolist()] for column in columns]
        missing = np.array([[cell is None for cell in column] for column in cells], dtype=bool).T.reshape(count, -1)
        return Raw(cells, missing)
    matrix = np.zeros((count, len(columns)))
    for index, column in enumerate(columns):
        series = table[column]
        numbers = pandas.to_numeric(series, errors="coerce")
        given = ~np.array([is_missing(c) for c in series.tolist()], dtype=bool)
        bad = np.flatnonzero(given & numbers.isna().to_numpy())
        if len(bad):
            raise _Where(name, kind, column).fail(int(bad[0]), f"{series.iloc[bad[0]]!r} is not a number "
                                                                f"(a missing value is an empty cell)")
        matrix[:, index] = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.flatnonzero(np.isinf(matrix).any(axis=1))
    if len(infinite):
        column = columns[int(np.isinf(matrix[infinite[0]]).argmax())]
        raise _Where(name, kind, column).fail(int(infinite[0]), "an infinite value; give a finite number or leave "
                                                                "the cell empty")
    return Raw(matrix, np.isnan(matrix))
