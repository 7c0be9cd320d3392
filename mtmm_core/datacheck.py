"""Validation of a user data folder (``dataset.yaml`` plus ``.npy`` arrays; see docs/data.md).

``check_dataset(path)`` lists every problem of a folder (file, field, row, message)
while reading the arrays in bounded chunks, so a folder larger than memory can be checked.
:mod:`mtmm_core.data_fit` compares the data with the model a config would build.

Every file named in dataset.yaml must lie inside the data folder: a relative path without
``..`` whose real path (symlinks followed) is inside the folder's real path
(:func:`resolve_inside`).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from mtmm_core.config import yaml_number

CONFIG_FILE = "dataset.yaml"
SPLITS = ("train", "validation", "test")
TOP_KEYS = ("modalities", "tasks", "splits", "description", "preprocessing")
MODALITY_KEYS = {
    "array": {"required": ("kind", "file"), "optional": ("scale", "present", "dtype", "vocab_sizes")},
    "sequence": {"required": ("kind", "values", "offsets"), "optional": ("scale", "present", "dtype", "vocab_sizes")},
}
TASK_KEYS = {
    "classification": {"required": ("kind", "file", "num_classes"), "optional": ()},
    "binary": {"required": ("kind", "file"), "optional": ()},
    "regression": {"required": ("kind", "file"), "optional": ()},
}
SPLIT_KEYS = ("file", "seed", "fractions")
DEFAULT_SPLITS = {"fractions": [0.8, 0.1, 0.1]}  # seed: dataset.yaml's, else data.seed, else 0
CHUNK_BYTES = 32 * 2**20  # how much of an array one scanning step reads
SHOWN_ROWS = 5  # rows quoted in one problem's message
FLOAT32_MAX = float(np.finfo(np.float32).max)  # values reach the model as float32: value * scale must stay below
SCALE_RANGE = (1e-12, 1e12)  # a modality's scale: a finite number in this range
MAX_CLASSES = 100_000  # num_classes of a classification task, and K of [N, K] labels
MAX_SAMPLE_VALUES = 2**26  # values in one sample: an array row, or the longest sequence's frames x features
CONFINEMENT = ("file names must be relative paths inside the data folder, without '..', "
               "and a symlink must point inside the folder")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data folder: ``file`` (relative to the folder), ``field`` of
    dataset.yaml (dotted), ``row`` (sample index, None when not about one row), ``message``."""

    file: str
    field: str
    row: int | None
    message: str

    def __str__(self) -> str:
        where = ", ".join(part for part in (self.file, self.field,
                                            None if self.row is None else f"row {self.row}") if part)
        return f"{where}: {self.message}"


def is_data_folder(name: Any) -> bool:
    """Whether ``name`` is a path to a folder holding ``dataset.yaml``."""
    return isinstance(name, (str, Path)) and (Path(name) / CONFIG_FILE).is_file()


def locate(root: Path, name: Any) -> tuple[Path | None, str | None]:
    """``(real path, None)`` for a file name of dataset.yaml that stays inside the folder ``root``,
    else ``(None, why not)``: not a non-empty string, absolute, with a ``..`` part, or resolving
    (through a symlink) outside ``root.resolve()``."""
    if not isinstance(name, str) or not name:
        return None, f"expected a file name relative to the data folder, got {name!r}"
    if "\x00" in name:
        return None, f"{name!r} is not a valid file name (it holds a NUL character)"
    if Path(name).is_absolute():
        return None, f"{name!r} is an absolute path; {CONFINEMENT}"
    if ".." in Path(name).parts:
        return None, f"{name!r} goes up with '..'; {CONFINEMENT}"
    try:
        base = root.resolve()
        path = (base / name).resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        return None, f"{name!r} cannot be resolved ({error}); {CONFINEMENT}"
    if path != base and base not in path.parents:
        return None, f"{name!r} resolves to {path} (through a symlink), outside the data folder {base}; {CONFINEMENT}"
    return path, None


def resolve_inside(root: str | Path, name: Any, field: str) -> Path:
    """The real path of the file ``name`` (named at ``field`` of dataset.yaml) inside the data
    folder ``root``; a ValueError naming the field and the name when it would leave the folder."""
    path, reason = locate(Path(root), name)
    if path is None:
        raise ValueError(f"{Path(root) / CONFIG_FILE}: {field}: {reason}")
    return path


def scale_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid ``scale`` of a modality (None when it is)."""
    value = yaml_number(value)
    low, high = SCALE_RANGE
    if not _number(value) or not math.isfinite(value) or not low <= value <= high:
        return f"expected a finite number in [{low:g}, {high:g}] (the values are multiplied by it), got {value!r}"
    return None


# -- helpers -----------------------------------------------------------------------------------------
def _close(name: Any, valid: tuple[str, ...] | list[str]) -> str:
    match = difflib.get_close_matches(str(name), list(valid), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _shown(rows: np.ndarray, values: np.ndarray | None = None, word: str = "row") -> str:
    """``rows 3, 8, 9 (values 12, -2, 11)`` for the first few rows, with the count when more."""
    head = [int(r) for r in rows[:SHOWN_ROWS]]
    text = ", ".join(map(str, head)) + (f", ... ({len(rows)} in all)" if len(rows) > SHOWN_ROWS else "")
    if values is not None:
        text += " (values " + ", ".join(_fmt(v) for v in values[:SHOWN_ROWS]) + ")"
    return f"{word} {text}" if len(rows) == 1 else f"{word}s {text}"


def _fmt(value: Any) -> str:
    value = np.asarray(value)
    if value.ndim:
        return "[" + ", ".join(_fmt(v) for v in value.ravel()[:4]) + (", ...]" if value.size > 4 else "]")
    return f"{value.item():g}" if value.dtype.kind == "f" else str(value.item())


def row_chunks(rows: int, row_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    step = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _row_bytes(array: np.ndarray) -> int:
    return int(array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))


def _scan_rows(array: np.ndarray, bad_of_chunk) -> tuple[np.ndarray, np.ndarray]:
    """Rows where ``bad_of_chunk(chunk)`` (a bool ``[rows]``) holds, and their values (first few only)."""
    rows, values = [], []
    for start, stop in row_chunks(len(array), _row_bytes(array)):
        chunk = np.asarray(array[start:stop])
        bad = np.flatnonzero(bad_of_chunk(chunk))
        if len(bad):
            rows.append(bad + start)
            if sum(map(len, values)) < SHOWN_ROWS:
                values.append(chunk[bad[:SHOWN_ROWS]])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(rows), np.concatenate(values)


def _per_row(flags: np.ndarray) -> np.ndarray:
    """Collapse a ``[rows, ...]`` bool array to ``[rows]``: any flag set in the row."""
    return flags.reshape(len(flags), -1).any(axis=1) if flags.ndim > 1 else flags


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- reading dataset.yaml ----------------------------------------------------------------------------
class _Checker:
    """Collects problems while reading a folder; ``N`` (and where it came from) fixed by the first array."""

    def __init__(self, root: Path, chunk_bytes: int, scan: bool = True):
        self.root, self.chunk_bytes, self.scan = root, chunk_bytes, scan
        self.problems: list[Problem] = []
        self.rows: int | None = None
        self.rows_source = ""

    def add(self, file: str, field: str, row: int | None, message: str) -> None:
        self.problems.append(Problem(file, field, None if row is None else int(row), message))

    def keys(self, entry: Any, field: str, required: tuple[str, ...], optional: tuple[str, ...]) -> bool:
        """Check that ``entry`` is a mapping with the required keys and no unknown ones."""
        if not isinstance(entry, dict):
            self.add(CONFIG_FILE, field, None, f"expected a mapping with keys {', '.join(required)}, "
                                               f"got {type(entry).__name__} {entry!r}")
            return False
        valid = required + optional
        for key in entry:
            if key not in valid:
                self.add(CONFIG_FILE, f"{field}.{key}", None,
                         f"unknown key{_close(key, valid)} Valid keys: {', '.join(valid)}")
        for key in required:
            if key not in entry:
                self.add(CONFIG_FILE, f"{field}.{key}", None, "missing")
        return all(key in entry for key in required)

    def open(self, entry: dict, key: str, field: str) -> np.ndarray | None:
        """Memory-map the ``.npy`` file named by ``entry[key]``, or record why it cannot be."""
        name = entry.get(key)
        if not isinstance(name, str) or not name:
            if key in entry:
                self.add(CONFIG_FILE, f"{field}.{key}", None, f"expected a file name, got {name!r}")
            return None
        path, reason = locate(self.root, name)
        if path is None:
            self.add(name, f"{field}.{key}", None, reason)
            return None
        if not path.is_file():
            self.add(name, f"{field}.{key}", None, f"file not found (looked for {self.root / name})")
            return None
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as error:  # noqa: BLE001 - any reason the file is not a plain .npy array
            self.add(name, f"{field}.{key}", None, f"not a readable .npy array: {error}")
            return None
        if not isinstance(array, np.ndarray) or array.ndim == 0:
            self.add(name, f"{field}.{key}", None, "expected an array with one row per sample")
            return None
        return array

    def count(self, file: str, field: str, rows: int, what: str = "rows") -> bool:
        """Check a row count against ``N``; the first array seen sets ``N``."""
        if self.rows is None:
            self.rows, self.rows_source = rows, f"{file} ({field})"
            return True
        if rows != self.rows:
            self.add(file, field, None, f"has {rows} {what}, expected {self.rows} "
                                        f"(the number of samples in {self.rows_source})")
            return False
        return True


def check_dataset(path: str | Path, *, chunk_bytes: int = CHUNK_BYTES, scan: bool = True) -> list[Problem]:
    """Every problem of the data folder at ``path`` (an empty list when it is valid).

    Arrays are memory-mapped and scanned ``chunk_bytes`` at a time, so checking a data
    set larger than memory works. ``scan=False`` checks only dataset.yaml and the files'
    names, headers, dtypes and shapes, not the values (``FolderDataset(path, check=False)``).
    """
    return _check(Path(path), chunk_bytes, scan)[0]


def _check(root: Path, chunk_bytes: int = CHUNK_BYTES, scan: bool = True) -> tuple[list[Problem], dict[str, Any]]:
    """The problems and, for a valid folder, what was learned (``N``, lengths of sequences)."""
    checker = _Checker(root, chunk_bytes, scan)
    spec = _read_yaml(checker)
    if spec is None:
        return checker.problems, {}
    presence: dict[str, Any] = {}  # modality -> (present array or None, lengths of a sequence or None)
    modalities = spec.get("modalities")
    if not isinstance(modalities, dict) or not modalities:
        checker.add(CONFIG_FILE, "modalities", None,
                    "expected a non-empty mapping of modality names to {kind: array | sequence, ...}")
        modalities = {}
    for name, entry in modalities.items():
        presence[name] = _check_modality(checker, str(name), entry)
    tasks = spec.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        checker.add(CONFIG_FILE, "tasks", None,
                    "expected a non-empty mapping of task names to {kind: classification | binary | regression, ...}")
        tasks = {}
    for name, entry in tasks.items():
        _check_task(checker, str(name), entry)
    _check_splits(checker, spec.get("splits", DEFAULT_SPLITS))
    if scan and modalities and all(value is not None for value in presence.values()):
        _check_some_modality_present(checker, presence)
    return checker.problems, {"rows": checker.rows}


def _read_yaml(checker: _Checker) -> dict | None:
    root = checker.root
    if not root.is_dir():
        checker.add(str(root), "", None, "not a folder; a data folder holds dataset.yaml and .npy files")
        return None
    if not (root / CONFIG_FILE).is_file():
        checker.add(CONFIG_FILE, "", None, f"missing: {root} has no {CONFIG_FILE} (see docs/data.md for the format)")
        return None
    path, reason = locate(root, CONFIG_FILE)
    if path is None:
        checker.add(CONFIG_FILE, "", None, reason)
        return None
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        checker.add(CONFIG_FILE, "", None, f"not valid YAML{where}: {getattr(error, 'problem', None) or error}")
        return None
    if not isinstance(spec, dict):
        checker.add(CONFIG_FILE, "", None, f"expected a mapping with keys modalities, tasks (and splits), "
                                           f"got {type(spec).__name__}")
        return None
    for key in spec:
        if key not in TOP_KEYS:
            checker.add(CONFIG_FILE, str(key), None, f"unknown key{_close(key, TOP_KEYS)} Valid keys: {', '.join(TOP_KEYS)}")
    return spec


def _check_kind(checker: _Checker, entry: Any, field: str, kinds: dict) -> str | None:
    if not isinstance(entry, dict):
        checker.add(CONFIG_FILE, field, None, f"expected a mapping with a kind ({' | '.join(kinds)}), got {entry!r}")
        return None
    kind = entry.get("kind")
    if kind not in kinds:
        message = "missing" if kind is None else f"unknown kind {kind!r}{_close(kind, tuple(kinds))}"
        checker.add(CONFIG_FILE, f"{field}.kind", None, f"{message}; valid kinds: {', '.join(kinds)}")
        return None
    return kind


def _check_modality(checker: _Checker, name: str, entry: Any):
    """Check one modality; returns ``(present or None, lengths or None)`` when its rows can be trusted."""
    field = f"modalities.{name}"
    kind = _check_kind(checker, entry, field, MODALITY_KEYS)
    if kind is None:
        return None
    checker.keys(entry, field, *MODALITY_KEYS[kind].values())
    scale = yaml_number(entry.get("scale", 1.0))
    reason = scale_problem(scale)
    if reason:
        checker.add(CONFIG_FILE, f"{field}.scale", None, reason)
        scale = 1.0
    ok, lengths = True, None
    if kind == "array":
        ok = _check_array(checker, entry, field, float(scale))
    else:
        lengths = _check_sequence(checker, entry, field, float(scale))
        ok = lengths is not None
    if ok and ("dtype" in entry or "vocab_sizes" in entry):  # ids (docs/data.md): mtmm_core/datacheck_ids.py
        from mtmm_core.datacheck_ids import check_ids

        ok = check_ids(checker, entry, field, kind)
    present = None
    if "present" in entry:
        present = _check_present(checker, entry, field)
        ok = ok and present is not None
    return (present, lengths) if ok else None


def _check_values(checker: _Checker, array: np.ndarray, file: str, field: str, sample_of=None,
                  frames: bool = False, scale: float = 1.0) -> bool:
    """A float or integer array whose values are all finite, also as float32 once multiplied by
    ``scale``. For the frames of a sequence (``frames``), ``sample_of`` maps a frame to its
    sample (None when the offsets are unusable)."""
    if array.dtype.kind not in "fiu":
        checker.add(file, field, None, f"expected float or integer values, got dtype {array.dtype}")
        return False
    if not checker.scan:
        return True
    ok = True
    if array.dtype.kind == "f":
        bad, _ = _scan_rows(array, lambda chunk: _per_row(~np.isfinite(chunk)))
        if len(bad):
            _report_rows(checker, file, field, bad, sample_of, frames, "non-finite values (NaN or inf)",
                         "mark a missing sample with a present file instead" if not frames
                         else "give a missing sample length 0 instead")
            ok = False
    largest = float(np.finfo(array.dtype).max if array.dtype.kind == "f"
                    else max(abs(int(np.iinfo(array.dtype).min)), int(np.iinfo(array.dtype).max)))
    if largest * scale > FLOAT32_MAX:  # float64 values, or a scale above 1: the float32 value may overflow
        bad, _ = _scan_rows(array, lambda chunk: _per_row(
            np.isfinite(chunk) & (np.abs(chunk.astype(np.float64)) * scale > FLOAT32_MAX)))
        if len(bad):
            _report_rows(checker, file, field, bad, sample_of, frames,
                         f"values too large for float32 once multiplied by the scale {scale:g} "
                         f"(|value| * scale > {FLOAT32_MAX:.4g})", "lower the scale or the values")
            ok = False
    return ok


def _report_rows(checker: _Checker, file: str, field: str, bad: np.ndarray, sample_of, frames: bool,
                 what: str, advice: str) -> None:
    """One problem for the rows (or, of a sequence, the frames and their samples) in ``bad``."""
    if not frames:
        checker.add(file, field, int(bad[0]), f"{what} in {_shown(bad)}; {advice}")
    elif sample_of is None:
        checker.add(file, field, None, f"{what} in {_shown(bad, word='frame')}")
    else:
        samples = np.unique(sample_of(bad))
        checker.add(file, field, int(samples[0]), f"{what} in {_shown(samples)} ({_shown(bad, word='frame')}); "
                                                  f"{advice}")


def _check_array(checker: _Checker, entry: dict, field: str, scale: float = 1.0) -> bool:
    array = checker.open(entry, "file", field)
    if array is None:
        return False
    file, field = entry["file"], f"{field}.file"
    ok = True
    if array.ndim < 2:
        checker.add(file, field, None, f"expected shape [N, ...] with at least one feature axis (e.g. "
                                       f"[N, F] or [N, C, H, W]), got {list(array.shape)}")
        ok = False
    else:
        size = int(np.prod(array.shape[1:], dtype=np.int64))
        if size == 0 or size > MAX_SAMPLE_VALUES:
            checker.add(file, field, None, f"a sample holds {size} values (shape {list(array.shape[1:])}); "
                                           f"expected between 1 and {MAX_SAMPLE_VALUES} per sample")
            ok = False
    ok = checker.count(file, field, array.shape[0]) and ok
    return _check_values(checker, array, file, field, scale=scale) and ok


def _check_sequence(checker: _Checker, entry: dict, field: str, scale: float = 1.0) -> np.ndarray | None:
    """Check values and offsets; returns the per-sample lengths (a memory-mapped difference view)."""
    values = checker.open(entry, "values", field)
    offsets = checker.open(entry, "offsets", field)
    offsets_ok = offsets is not None
    if offsets is not None:
        file, ofield = entry["offsets"], f"{field}.offsets"
        if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
            checker.add(file, ofield, None, f"expected integer offsets [N + 1], got dtype {offsets.dtype} "
                                            f"shape {list(offsets.shape)}")
            offsets_ok = False
        elif len(offsets) == 0:
            checker.add(file, ofield, None, "is empty; expected N + 1 offsets starting at 0")
            offsets_ok = False
        else:
            offsets_ok = checker.count(file, ofield, len(offsets) - 1, "samples (offsets minus one)")
            if int(offsets[0]) != 0:
                checker.add(file, ofield, 0, f"the first offset is {int(offsets[0])}, expected 0")
                offsets_ok = False
            drops, longest, longest_row = _scan_offsets(offsets, checker.chunk_bytes) if checker.scan else ([], 0, 0)
            if len(drops):
                checker.add(file, ofield, int(drops[0]),
                            f"offsets decrease (offsets[i + 1] < offsets[i]) at {_shown(drops)}: "
                            "offsets must be non-decreasing")
                offsets_ok = False
            elif values is not None and values.ndim == 2 and longest * values.shape[1] > MAX_SAMPLE_VALUES:
                checker.add(file, ofield, longest_row,
                            f"sample {longest_row} has {longest} frames of {values.shape[1]} values "
                            f"({longest * values.shape[1]} values); expected at most {MAX_SAMPLE_VALUES} per sample")
                offsets_ok = False
            if values is not None and values.ndim >= 1 and int(offsets[-1]) != len(values):
                checker.add(file, ofield, len(offsets) - 1, f"the last offset is {int(offsets[-1])}, expected "
                                                            f"{len(values)} (the number of frames in {entry['values']})")
                offsets_ok = False
    values_ok = values is not None
    if values is not None:
        file, vfield = entry["values"], f"{field}.values"
        if values.ndim != 2:
            checker.add(file, vfield, None, f"expected frames [total, F], got shape {list(values.shape)}")
            values_ok = False
        elif not 1 <= values.shape[1] <= MAX_SAMPLE_VALUES:
            checker.add(file, vfield, None, f"expected frames [total, F] with 1 <= F <= {MAX_SAMPLE_VALUES} "
                                            f"features, got shape {list(values.shape)}")
            values_ok = False
        else:
            sample_of = (lambda frames: np.searchsorted(offsets, frames, side="right") - 1) if offsets_ok else None
            values_ok = _check_values(checker, values, file, vfield, sample_of, frames=True, scale=scale)
    if not (offsets_ok and values_ok):
        return None
    return offsets


def _scan_offsets(offsets: np.ndarray, chunk_bytes: int) -> tuple[np.ndarray, int, int]:
    """Rows ``i`` with ``offsets[i + 1] < offsets[i]``, the longest length and its row, scanned in chunks."""
    found, longest, longest_row = [], 0, 0
    for start, stop in row_chunks(len(offsets) - 1, 2 * offsets.dtype.itemsize, chunk_bytes):
        sizes = np.diff(np.asarray(offsets[start:stop + 1]).astype(np.int64))
        bad = np.flatnonzero(sizes < 0)
        if len(bad):
            found.append(bad + start)
        if len(sizes) and int(sizes.max()) > longest:
            longest, longest_row = int(sizes.max()), start + int(sizes.argmax())
    return (np.concatenate(found) if found else np.zeros(0, dtype=np.int64)), longest, longest_row


def _check_present(checker: _Checker, entry: dict, field: str) -> np.ndarray | None:
    present = checker.open(entry, "present", field)
    if present is None:
        return None
    file, field = entry["present"], f"{field}.present"
    if present.ndim != 1 or present.dtype.kind not in "biu":
        checker.add(file, field, None, f"expected bool [N] (or 0/1 integers), got dtype {present.dtype} "
                                       f"shape {list(present.shape)}")
        return None
    ok = checker.count(file, field, len(present))
    if present.dtype.kind != "b" and checker.scan:
        bad, values = _scan_rows(present, lambda chunk: (chunk != 0) & (chunk != 1))
        if len(bad):
            checker.add(file, field, int(bad[0]), f"values other than 0 and 1 at {_shown(bad, values)}")
            ok = False
    return present if ok else None


def _check_task(checker: _Checker, name: str, entry: Any) -> None:
    field = f"tasks.{name}"
    kind = _check_kind(checker, entry, field, TASK_KEYS)
    if kind is None:
        return
    checker.keys(entry, field, *TASK_KEYS[kind].values())
    num_classes = entry.get("num_classes")
    if kind == "classification" and "num_classes" in entry and (
            not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 2 <= num_classes <= MAX_CLASSES):
        checker.add(CONFIG_FILE, f"{field}.num_classes", None,
                    f"expected an integer in [2, {MAX_CLASSES}] (and above the largest label), got {num_classes!r}")
        num_classes = None
    labels = checker.open(entry, "file", field)
    if labels is None:
        return
    file, field = entry["file"], f"{field}.file"
    if kind == "classification" and labels.ndim != 1:
        checker.add(file, field, None, f"expected class labels [N], got shape {list(labels.shape)}")
        return
    if labels.ndim > 2:
        checker.add(file, field, None, f"expected labels [N] or [N, K], got shape {list(labels.shape)}")
        return
    if labels.ndim == 2 and not 1 <= labels.shape[1] <= MAX_CLASSES:
        checker.add(file, field, None, f"expected labels [N, K] with 1 <= K <= {MAX_CLASSES}, "
                                       f"got shape {list(labels.shape)}")
        return
    checker.count(file, field, labels.shape[0])
    if labels.dtype.kind not in "biuf" or (labels.dtype.kind == "b" and kind != "binary"):
        checker.add(file, field, None, f"expected {'integer' if kind == 'classification' else 'float'} labels, "
                                       f"got dtype {labels.dtype}")
        return
    if not checker.scan:
        return
    floating = labels.dtype.kind == "f"
    if kind == "classification":
        if num_classes is not None:
            valid = lambda c: (c == -1) | ((c >= 0) & (c < num_classes)) | (np.isnan(c) if floating else False)  # noqa: E731
            bad, values = _scan_rows(labels, lambda c: ~valid(c))
            if len(bad):
                checker.add(file, field, int(bad[0]), f"class labels outside [0, {num_classes}) at "
                                                      f"{_shown(bad, values)} (-1 marks a missing label)")
        if floating:
            bad, values = _scan_rows(labels, lambda c: np.isfinite(c) & (c != np.round(c)))
            if len(bad):
                checker.add(file, field, int(bad[0]), f"class labels that are not integers at {_shown(bad, values)}")
    elif kind == "binary":
        if labels.dtype.kind != "b":
            bad, values = _scan_rows(labels, lambda c: _per_row(
                (c != 0) & (c != 1) & (~np.isnan(c) if floating else c != -1)))
            if len(bad):
                marker = "NaN" if floating else "-1"
                checker.add(file, field, int(bad[0]), f"binary labels other than 0, 1 and {marker} (missing) at "
                                                      f"{_shown(bad, values)}")
    elif floating:
        largest = float(np.finfo(np.float32).max)
        bad, values = _scan_rows(labels, lambda c: _per_row(np.isinf(c) | (np.abs(c) > largest)))
        if len(bad):
            checker.add(file, field, int(bad[0]), f"regression targets that are infinite or beyond float32's "
                                                  f"range (|y| > {largest:.3g}) at {_shown(bad, values)} "
                                                  "(NaN marks a missing label)")
    missing_rows = 0
    for start, stop in row_chunks(labels.shape[0], _row_bytes(labels)):
        missing_rows += int(missing_labels(np.asarray(labels[start:stop]), kind).sum())
    if labels.shape[0] and missing_rows == labels.shape[0]:
        checker.add(file, field, None, "every label is missing; a task needs labelled samples")


def missing_labels(labels: np.ndarray, kind: str) -> np.ndarray:
    """Bool ``[rows]``: the sample has no label (NaN in float files, -1 in integer ones; any in a row of K)."""
    if labels.dtype.kind == "b":
        return np.zeros(len(labels), dtype=bool)
    flags = np.isnan(labels) if labels.dtype.kind == "f" else labels == -1
    if kind == "classification" and labels.dtype.kind == "f":
        flags = flags | (labels == -1)
    return _per_row(flags)


def split_sizes(spec: Any, rows: int) -> dict[str, int]:
    fractions = spec["fractions"]
    train = int(round(fractions[0] * rows))
    validation = min(rows - train, int(round(fractions[1] * rows)))
    return {"train": train, "validation": validation, "test": rows - train - validation}


def _check_splits(checker: _Checker, spec: Any) -> None:
    field = "splits"
    if not isinstance(spec, dict):
        checker.add(CONFIG_FILE, field, None, f"expected {{file: split.npy}} or {{seed: 0, fractions: [0.8, 0.1, 0.1]}}, "
                                              f"got {spec!r}")
        return
    for key in spec:
        if key not in SPLIT_KEYS:
            checker.add(CONFIG_FILE, f"{field}.{key}", None, f"unknown key{_close(key, SPLIT_KEYS)} "
                                                             f"Valid keys: file, or seed and fractions")
    sizes = None
    if "file" in spec:
        if "fractions" in spec or "seed" in spec:
            checker.add(CONFIG_FILE, field, None, "give either file or seed and fractions, not both")
        codes = checker.open(spec, "file", field)
        if codes is None:
            return
        file, field = spec["file"], f"{field}.file"
        if codes.ndim != 1 or codes.dtype.kind not in "iu":
            checker.add(file, field, None, f"expected integer split codes [N] (0 train, 1 validation, 2 test), "
                                           f"got dtype {codes.dtype} shape {list(codes.shape)}")
            return
        checker.count(file, field, len(codes))
        if not checker.scan:
            return
        bad, values = _scan_rows(codes, lambda c: (c < 0) | (c > 2))
        if len(bad):
            checker.add(file, field, int(bad[0]), f"split codes outside {{0, 1, 2}} at {_shown(bad, values)} "
                                                  "(0 train, 1 validation, 2 test)")
        counts = np.zeros(3, dtype=np.int64)
        for start, stop in row_chunks(len(codes), codes.dtype.itemsize, checker.chunk_bytes):
            chunk = np.asarray(codes[start:stop])
            counts += np.bincount(chunk[(chunk >= 0) & (chunk <= 2)].astype(np.int64), minlength=3)
        sizes = dict(zip(SPLITS, counts.tolist()))
    else:
        seed, fractions = spec.get("seed", 0), spec.get("fractions", DEFAULT_SPLITS["fractions"])
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            checker.add(CONFIG_FILE, f"{field}.seed", None, f"expected an integer >= 0, got {seed!r}")
        if (not isinstance(fractions, list) or len(fractions) != 3 or not all(map(_number, fractions))
                or not all(map(math.isfinite, fractions)) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6):
            checker.add(CONFIG_FILE, f"{field}.fractions", None,
                        f"expected three non-negative numbers summing to 1 (train, validation, test), got {fractions!r}")
        elif checker.rows is not None:
            sizes = split_sizes({"fractions": fractions}, checker.rows)
    for name, size in (sizes or {}).items():
        if size == 0:
            checker.add(CONFIG_FILE if "file" not in spec else spec["file"], field, None,
                        f"the {name} split is empty; mtmm train needs samples in train, validation and test")


def _check_some_modality_present(checker: _Checker, presence: dict[str, Any]) -> None:
    """Report samples for which no modality is present (length 0 and/or present False everywhere)."""
    if checker.rows is None:
        return
    found = []
    for start, stop in row_chunks(checker.rows, 16 * len(presence), checker.chunk_bytes):
        some = np.zeros(stop - start, dtype=bool)
        for present, offsets in presence.values():
            here = np.ones(stop - start, dtype=bool)
            if offsets is not None:
                here &= np.diff(np.asarray(offsets[start:stop + 1])) > 0
            if present is not None:
                here &= np.asarray(present[start:stop]).astype(bool)
            some |= here
        if not some.all():
            found.append(np.flatnonzero(~some) + start)
    if found:
        rows = np.concatenate(found)
        checker.add(CONFIG_FILE, "modalities", int(rows[0]),
                    f"no modality is present for {_shown(rows)}; every sample needs at least one")
