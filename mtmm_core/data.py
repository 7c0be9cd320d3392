"""Data sets for training: a registered name or a data folder, and what the model spec learns from them."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from mtmm_core.components import create
from mtmm_core.errors import SpecError
from mtmm_core.userdata import FolderDataset, is_data_folder

HEAD_OF_TASK_KIND = {"classification": "classification", "binary": "binary", "regression": "regression"}


def load_dataset(data_config: dict[str, Any]) -> Any:
    """The data set named by the config's ``data`` section (its other keys are the factory's parameters)."""
    params = {k: v for k, v in data_config.items() if k != "name"}
    if is_data_folder(data_config["name"]):  # a folder with dataset.yaml (docs/data.md)
        return FolderDataset(data_config["name"], **params)
    return create("dataset", data_config["name"], **params)


def complete_model_spec(spec: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """Fill in what the data set knows: ``tasks`` from its task kinds when the spec leaves them
    out, and each regression head's ``target_mean``/``target_std`` from the training split."""
    spec = copy.deepcopy(spec)
    if "tasks" not in spec:
        spec["tasks"] = {}
        for task, info in dataset.tasks.items():
            entry = {"head": HEAD_OF_TASK_KIND[info["kind"]]}
            if info["kind"] == "classification":
                entry["num_classes"] = info["num_classes"]
            spec["tasks"][task] = entry
    unknown = [task for task in spec["tasks"] if task not in dataset.tasks]
    if unknown:
        raise SpecError(f"model.tasks.{unknown[0]}", f"the data set has no task {unknown[0]!r}; its tasks: "
                        f"{', '.join(dataset.tasks)}. Name those tasks in model.tasks, or leave model.tasks out "
                        "to take them all from the data set")
    for task, entry in spec["tasks"].items():
        if isinstance(entry, dict) and entry.get("head") == "regression" and "target_std" not in entry:
            mean, std = target_statistics(dataset.splits["train"], task)
            entry.setdefault("target_mean", mean)
            entry["target_std"] = std
    return spec


def target_statistics(split: Any, task: str, batch_size: int = 1024) -> tuple[float, float]:
    """Mean and standard deviation of a regression task's labelled training targets."""
    values = []
    for start in range(0, len(split), batch_size):
        batch = split.batch(np.arange(start, min(start + batch_size, len(split))))
        target = batch.targets[task].double()
        mask = (batch.task_masks or {}).get(task)
        values.append(target[mask] if mask is not None else target)
    joined = torch.cat(values)
    if joined.numel() < 2:
        return 0.0, 1.0
    return float(joined.mean()), float(joined.std().clamp_min(1e-6))
