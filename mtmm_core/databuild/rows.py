"""Tables where a data set is expected: training on a table (built once into a cached folder), new
raw rows to predict (preprocessed in memory), and the preprocessing a run keeps (``preprocessing.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mtmm_core.databuild.build import build_data, encode_rows, fingerprint, folder_tasks
from mtmm_core.errors import UsageError
from mtmm_core.userdata import FolderDataset, FolderSplit

RUN_FILE = "preprocessing.yaml"


def table_dataset(name: str, *, schema: str | None = None, out: str | None = None, **params: Any) -> FolderDataset:
    """The data set of a config's ``data: {name: TABLE, schema: SCHEMA}`` (``out``: where the folder is built,
    default ``TABLE.mtmm`` beside the table). The folder is built when missing and rebuilt when the table
    or the schema changed since (their fingerprint is in its dataset.yaml); ``params`` (seed, check) go to
    :class:`FolderDataset`."""
    if schema is None:
        raise UsageError(f"data set {name!r} is a table: give its schema too, data: {{name: {name}, schema: "
                         "schema.yaml}} (docs/tables.md), or build a folder with `mtmm data build`")
    folder = Path(out) if out else Path(f"{name}.mtmm")
    wanted = fingerprint(name, schema)
    current = None
    if (folder / "dataset.yaml").is_file():
        spec = yaml.safe_load((folder / "dataset.yaml").read_text()) or {}
        current = ((spec.get("preprocessing") or {}).get("source") or {}).get("fingerprint")
    if current != wanted and int(os.environ.get("RANK", "0")) == 0:
        build_data(name, schema, folder, force=True)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # under torchrun, rank 0 builds and every rank waits
        dist.barrier()
    return FolderDataset(folder, **params)


class RowsDataset(FolderDataset):
    """New raw rows preprocessed in memory as a built folder would hold them: one split, ``rows``, whose
    sample ``i`` is row ``i`` of the table. ``modalities``, ``tasks`` and ``batch`` as a :class:`FolderDataset`."""

    def __init__(self, table: Any, preprocessing: dict):  # noqa: D107 - no folder to check
        modalities, labels = encode_rows(table, preprocessing)
        self.root, self.seed, self.description = Path("."), None, "new rows"
        self.preprocessing = preprocessing
        self._sequence_stats = None
        self._modalities, self.modalities = {}, {}
        for name, encoded in modalities.items():
            ids = encoded.dtype == "int64"
            opened: dict[str, Any] = {"kind": encoded.kind, "scale": 1.0, "ids": ids}
            if encoded.kind == "array":
                opened["file"] = encoded.values
                info = {"kind": "array", "shape": list(encoded.values.shape[1:])}
            else:
                opened["values"], opened["offsets"] = encoded.values, encoded.offsets
                info = {"kind": "sequence", "shape": [None] if ids else [None, int(encoded.values.shape[1])]}
            if encoded.present is not None:
                opened["present"] = encoded.present
            if ids:
                info.update(dtype="int64", vocab_sizes=list(encoded.vocab_sizes))
            self._modalities[name], self.modalities[name] = opened, info
        self._labels = labels
        self.tasks = {name: {key: value for key, value in task.items() if key != "file"}
                      for name, task in folder_tasks(preprocessing["targets"], labels).items()}
        self.num_samples = len(next(iter(labels.values()))) if labels else 0
        self.splits = {"rows": FolderSplit("rows", np.arange(self.num_samples), self)}


def save_run_preprocessing(dataset: Any, run_dir: str | Path) -> Path | None:
    """Copy the preprocessing of a built data set into the run folder ``run_dir`` (``preprocessing.yaml``),
    so that the run predicts on raw rows without its data folder; None when the data set has none (an
    earlier run's file there is then removed). Only rank 0 of a distributed run writes."""
    preprocessing = getattr(dataset, "preprocessing", None)
    path = Path(run_dir) / RUN_FILE
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    if not preprocessing:
        path.unlink(missing_ok=True)  # an earlier run's, in a folder reused with --force
        return None
    temporary = path.with_name(f".{RUN_FILE}.{os.getpid()}")
    temporary.write_text(yaml.safe_dump(preprocessing, sort_keys=False, allow_unicode=True))
    temporary.replace(path)
    return path


def run_preprocessing(run_dir: str | Path) -> dict:
    """The preprocessing of a run trained on a built table: its ``preprocessing.yaml``, else that of the data
    folder its config.yaml names; a UsageError when the run's data was not built from a table."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).is_file():
        return yaml.safe_load((run_dir / RUN_FILE).read_text())
    from mtmm_core.config import read_run_config
    from mtmm_core.data import load_dataset

    data = read_run_config(run_dir)["data"]
    dataset = load_dataset(data) if (Path(data["name"]) / "dataset.yaml").is_file() or data.get("schema") else None
    if dataset is None or not getattr(dataset, "preprocessing", None):
        raise UsageError(f"{run_dir} was not trained on a table built by `mtmm data build` (it has no "
                         f"{RUN_FILE}), so it cannot preprocess raw rows; give a data folder with --data")
    return dataset.preprocessing
