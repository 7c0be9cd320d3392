"""A table (CSV, Parquet or a pandas DataFrame) into a data folder (docs/tables.md, docs/data.md).

``build_data(table, schema, out)`` reads the table, splits its rows, learns every feature's
preprocessing from the training rows only, and writes the memory-mapped folder: one modality
per feature, one label file per target, ``split.npy``, and ``dataset.yaml`` whose
``preprocessing`` section records the schema and everything learned (so that new raw rows can
be preprocessed the same: :func:`encode_rows`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mtmm_core.databuild import preprocess
from mtmm_core.databuild.readers import read_feature
from mtmm_core.databuild.schema import parse_schema, read_schema_file
from mtmm_core.databuild.targets import encode_target, fit_target, split_codes
from mtmm_core.errors import UsageError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
FORMAT = 1  # of the preprocessing section


def is_table(name: Any) -> bool:
    """Whether ``name`` is the path of a table file (.csv, .tsv, .parquet, .pq)."""
    return isinstance(name, (str, Path)) and str(name).lower().endswith(TABLE_SUFFIXES)


def read_table(table: Any) -> tuple[Any, Path]:
    """``(DataFrame, base folder for relative paths)`` of a pandas DataFrame (base: the working folder)
    or a .csv / .tsv / .parquet file (base: its folder), read with pandas (Parquet through pyarrow)."""
    try:
        import pandas
    except ImportError as error:
        raise UsageError("reading a table needs pandas: pip install 'mtmm[tables]'") from error
    if isinstance(table, pandas.DataFrame):
        return table.reset_index(drop=True), Path.cwd()
    path = Path(table)
    if not path.is_file():
        raise UsageError(f"table {str(table)!r}: no such file")
    if not is_table(path):
        raise UsageError(f"table {str(table)!r}: expected a {', '.join(TABLE_SUFFIXES)} file or a pandas DataFrame")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pandas.read_parquet(path)
        else:
            frame = pandas.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=True)
    except ImportError as error:
        raise UsageError(f"reading {path} needs pyarrow: pip install 'mtmm[tables]'") from error
    except Exception as error:  # noqa: BLE001 - pandas' parser errors: say which file
        raise UsageError(f"table {path}: cannot be read: {error}") from error
    return frame.reset_index(drop=True), path.parent.resolve()


def fingerprint(table: Any, schema: Any) -> str:
    """What a cached build depends on: the table file's size and modification time, and the schema."""
    schema_text = yaml.safe_dump(read_schema_file(schema), sort_keys=True)
    stat = Path(table).stat()
    return hashlib.sha256(f"{Path(table).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{schema_text}".encode()).hexdigest()[:16]


def build_data(table: Any, schema: str | Path | dict, out: str | Path, *, force: bool = False) -> Path:
    """Build the data folder ``out`` from ``table`` (a DataFrame, or a .csv / .tsv / .parquet path) and
    ``schema`` (a mapping or a YAML file). ``out`` must not exist, be empty, or (with ``force``) hold
    an earlier build, which is replaced. Returns ``out``."""
    out = Path(out)
    frame, base = read_table(table)
    spec = parse_schema(schema, [str(c) for c in frame.columns])
    frame.columns = [str(c) for c in frame.columns]
    _absolute_folders(spec)
    if len(frame) < 3:
        raise UsageError(f"the table has {len(frame)} row(s); a data folder needs at least one per split")
    codes = split_codes(spec["split"], frame)
    train = codes == 0
    features, modalities = {}, {}
    for name, feature in spec["features"].items():
        raw = read_feature(name, feature, frame, base)
        fitted = preprocess.fit(name, feature, raw, train)
        features[name] = {**feature, "fitted": fitted}
        modalities[name] = preprocess.apply(name, feature, fitted, raw)
    targets = {name: fit_target(name, target, frame) for name, target in spec["targets"].items()}
    labels = {name: encode_target(name, target, frame) for name, target in targets.items()}
    source = {"rows": len(frame)}
    if not isinstance(table, (dict, list)) and is_table(table):
        source.update(table=str(Path(table).resolve()), fingerprint=fingerprint(table, schema))
    preprocessing = {"format": FORMAT, "source": source, "features": features, "targets": targets,
                     "split": spec["split"]}
    _check_splits(codes)
    _check_some_feature(modalities)
    write_folder(out, modalities, labels, targets, codes, preprocessing, spec["description"], force)
    return out


def _absolute_folders(spec: dict) -> None:
    """A ``tokenizer`` or ``feature_extractor`` folder (relative to the working folder) as an absolute path, so
    that the preprocessing recorded in the folder and in a run reads the same folder from anywhere."""
    for feature in spec["features"].values():
        for key in ("tokenizer", "feature_extractor"):
            folder = Path(feature[key]).expanduser() if feature.get(key) else None
            if folder is not None and folder.is_dir():
                feature[key] = str(folder.resolve())


def _check_some_feature(modalities: dict[str, preprocess.Encoded]) -> None:
    """Every row needs a feature present (a sequence of length 0 is absent)."""
    present = None
    for encoded in modalities.values():
        flags = np.ones(len(encoded.offsets) - 1 if encoded.kind == "sequence" else len(encoded.values), dtype=bool)
        if encoded.kind == "sequence":
            flags &= np.diff(encoded.offsets) > 0
        if encoded.present is not None:
            flags &= encoded.present
        present = flags if present is None else present | flags
    empty = np.flatnonzero(~present)
    if len(empty):
        shown = ", ".join(map(str, empty[:5])) + (f", ... ({len(empty)} in all)" if len(empty) > 5 else "")
        raise UsageError(f"rows {shown} have no feature present (each one missing, or absent by its missing "
                         "strategy); every row needs one: drop those rows or fill their values")


def _check_splits(codes: np.ndarray) -> None:
    for code, name in enumerate(("train", "validation", "test")):
        if not (codes == code).any():
            raise UsageError(f"the split leaves {name} empty; every split needs a row (training validates "
                             "every epoch and tests at the end): give more rows or other fractions")


def encode_rows(table: Any, preprocessing: dict) -> tuple[dict[str, preprocess.Encoded], dict[str, np.ndarray]]:
    """New raw rows (a DataFrame or a table file with the columns of the features; target columns
    optional) through the stored ``preprocessing``: ``(modalities, labels)`` of every row, as
    :func:`build_data` encodes them. A label column left out gives all-missing labels."""
    frame, base = read_table(table)
    frame.columns = [str(c) for c in frame.columns]
    columns = list(frame.columns)
    modalities = {}
    for name, feature in preprocessing["features"].items():
        lacking = [c for c in feature["columns"] if c not in columns]
        if lacking:
            raise UsageError(f"the rows lack column {lacking[0]!r} of feature {name!r} (kind {feature['kind']}); "
                             f"their columns: {', '.join(columns)}")
        spec = {k: v for k, v in feature.items() if k != "fitted"}
        modalities[name] = preprocess.apply(name, spec, feature["fitted"], read_feature(name, spec, frame, base))
    labels = {}
    for name, target in preprocessing["targets"].items():
        if target["column"] in columns:
            labels[name] = encode_target(name, target, frame, strict=False)
        else:
            labels[name] = (np.full(len(frame), -1, np.int64) if target["kind"] == "classification"
                            else np.full(len(frame), np.nan, np.float32))
    return modalities, labels


def folder_tasks(targets: dict, labels: dict[str, np.ndarray]) -> dict[str, dict]:
    """The ``tasks`` of dataset.yaml for the fitted targets."""
    tasks = {}
    for name, target in targets.items():
        tasks[name] = {"kind": target["kind"], "file": f"labels/{name}.npy"}
        if target["kind"] == "classification":
            tasks[name]["num_classes"] = len(target["classes"])
    return tasks


def write_folder(out: Path, modalities: dict[str, preprocess.Encoded], labels: dict[str, np.ndarray],
                 targets: dict, codes: np.ndarray, preprocessing: dict, description: str, force: bool) -> None:
    """Write the folder into a temporary sibling, then move it to ``out`` (replacing an earlier build)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        earlier = out / "dataset.yaml"
        built = earlier.is_file() and "preprocessing" in (yaml.safe_load(earlier.read_text()) or {})
        if not built:
            raise UsageError(f"{out} exists and is not an earlier `mtmm data build` folder; give another --out")
        if not force:
            raise UsageError(f"{out} holds an earlier build; pass --force (force=True) to replace it")
    temporary = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    (temporary / "labels").mkdir(parents=True)
    entries = {}
    for name, encoded in modalities.items():
        if encoded.kind == "array":
            np.save(temporary / f"{name}.npy", encoded.values)
            entry = {"kind": "array", "file": f"{name}.npy"}
        else:
            np.save(temporary / f"{name}_values.npy", encoded.values)
            np.save(temporary / f"{name}_offsets.npy", encoded.offsets)
            entry = {"kind": "sequence", "values": f"{name}_values.npy", "offsets": f"{name}_offsets.npy"}
        if encoded.present is not None:
            np.save(temporary / f"{name}_present.npy", encoded.present)
            entry["present"] = f"{name}_present.npy"
        if encoded.dtype == "int64":
            entry.update(dtype="int64", vocab_sizes=list(encoded.vocab_sizes))
        entries[name] = entry
    for name, values in labels.items():
        np.save(temporary / "labels" / f"{name}.npy", values)
    np.save(temporary / "split.npy", codes)
    spec = {"description": description or "built by mtmm data build", "modalities": entries,
            "tasks": folder_tasks(targets, labels), "splits": {"file": "split.npy"}, "preprocessing": preprocessing}
    (temporary / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary.rename(out)
