"""Train and use runs from Python: :func:`train` and :func:`load_run`, both returning a :class:`Run`.

The command line is a thin layer over the same code: ``mtmm_core.train("default", train={"epochs": 2})``
does what ``mtmm train default --set train.epochs=2`` does and writes the same run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from mtmm_core.config import load_config, read_run_config
from mtmm_core.data import load_dataset
from mtmm_core.errors import UsageError
from mtmm_core.evaluation import evaluate, select_modalities
from mtmm_core.model import MultimodalMultitaskModel
from mtmm_core.predict import load_trained_model, predict_arrays


@dataclass
class Run:
    """A run folder and what it holds: the model with its best weights (in eval mode, on ``device``),
    its config, one record per epoch (``metrics.jsonl``) and the test metrics (``test_metrics.json``;
    empty when the run was not tested)."""

    path: Path
    config: dict[str, Any]
    model: MultimodalMultitaskModel
    history: list[dict[str, Any]] = field(default_factory=list)
    test_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose weights ``model`` holds (best on ``train.monitor``), when the log says."""
        from mtmm_core.evaluation import is_better

        monitor = self.config.get("train", {}).get("monitor", "loss")
        best, epoch = None, None
        for record in self.history:
            value = record["validation"].get(monitor)
            if value is not None and is_better(monitor, value, best):
                best, epoch = value, record["epoch"]
        return epoch

    def evaluate(self, data: str | None = None, modalities: list[str] | str | None = None,
                 split: str = "test", batch_size: int = 256) -> dict[str, float]:
        """Metrics ``{"<task>.<metric>": value, ..., "loss": total}`` on ``split`` of the run's data
        (or of ``data``: a registered name or a data folder), optionally with a subset of modalities."""
        dataset = load_dataset({"name": data} if data else self.config["data"])
        if split not in dataset.splits:
            raise UsageError(f"split {split!r} is not in the data set; it has {', '.join(dataset.splits)}")
        chosen = select_modalities(modalities, self.model.modalities)
        device = next(self.model.parameters()).device
        return evaluate(self.model, dataset.splits[split], device, batch_size, chosen)

    def predict(self, data: str | None = None, modalities: list[str] | str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        """Predictions for every sample of ``data`` (default: the run's data set; a .csv / .parquet table of
        new raw rows for a run trained on a built table, docs/tables.md) as arrays of N rows:
        ``split``, ``row``, ``<task>`` (raw output), ``<task>.label`` (predicted class),
        ``<task>.probability`` (binary heads); see :func:`mtmm_core.predict.predict_arrays`."""
        from mtmm_core.databuild.build import is_table

        if data is not None and is_table(data):  # new raw rows, preprocessed as the run's table was
            from mtmm_core.databuild import RowsDataset, run_preprocessing

            dataset = RowsDataset(data, run_preprocessing(self.path))
        else:
            dataset = load_dataset({"name": data} if data else self.config["data"])
        chosen = select_modalities(modalities, self.model.modalities)
        return predict_arrays(self.model, dataset, batch_size, chosen)


def _dotted(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{"train": {"epochs": 2}, "model.fusion.name": "gated"}`` as ``["train.epochs=2", "model.fusion.name=gated"]``.

    Nested mappings become dotted keys (as ``--set`` writes them); each value is written as JSON,
    which the config reads back as the same YAML value.
    """
    flat: list[str] = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.extend(_dotted(value, dotted + "."))
        else:
            flat.append(f"{dotted}={json.dumps(value)}")
    return flat


def train(config: str | Path | Mapping[str, Any] | None = None, *, out: str | Path | None = None,
          data: str | Path | Mapping[str, Any] | None = None, init_from: str | Path | None = None, force: bool = False,
          resume: str | Path | None = None, on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
          **overrides: Any) -> Run:
    """Train a model and return its :class:`Run` (the model holds the best epoch's weights).

    ``config`` is a config file, the name of a shipped config (``"default"``, ``"gated"``, ...) or a
    mapping (which may ``extends:`` one). ``overrides`` set config values as ``--set`` does, as
    sections or dotted keys: ``train={"epochs": 2}``, ``**{"model.fusion.name": "gated"}``.
    ``out`` is the run folder (default ``runs/<time>``); ``data`` a registered data set or a data
    folder (as ``--data``), or keys of the ``data`` section (``data={"name": "avdigits", "seed": 1}``); ``init_from`` a run whose weights start this one; ``resume`` continues an interrupted
    run from its own config. ``on_epoch_end(record)`` sees each epoch's ``metrics.jsonl`` record.
    """
    from mtmm_core.trainer import Trainer

    if resume is not None:
        if config is not None or data or init_from or overrides or force or out:
            raise UsageError("resume continues a run with its own config.yaml; pass no config, overrides, data, "
                             "init_from, out or force with it")
        out_dir, merged = Path(resume), read_run_config(resume)
    else:
        extra = _dotted(overrides)
        if isinstance(data, Mapping):  # the data section's keys, like any other section
            extra += _dotted({"data": data})
        elif data:
            extra.append(f"data.name={json.dumps(str(data))}")
        if init_from:
            extra.append(f"transfer.init_from={json.dumps(str(init_from))}")
        merged = load_config(config, extra)
        out_dir = Path(out) if out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    trainer = Trainer(merged, out_dir, resume=resume is not None, force=force, on_epoch_end=on_epoch_end)
    metrics = trainer.run()
    return Run(path=out_dir, config=merged, model=trainer.model.eval(), history=_read_history(out_dir),
               test_metrics=metrics)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """The run in folder ``path`` (written by ``mtmm train`` or :func:`train`), its model with the best
    weights (``best.pt``, else ``last.pt``) on ``device``, in eval mode. A folder written by
    ``mtmm export --format safetensors`` loads too (weights from ``model.safetensors``; its ``history``
    and ``test_metrics`` are empty)."""
    path = Path(path)
    model = load_trained_model(path, device)
    return Run(path=path, config=read_run_config(path), model=model, history=_read_history(path),
               test_metrics=_read_json(path / "test_metrics.json"))


def _read_history(path: Path) -> list[dict[str, Any]]:
    from mtmm_core.plot import read_log

    return read_log(path) if (path / "metrics.jsonl").is_file() else []


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
