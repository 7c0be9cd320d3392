"""Data sets for training: a registered name or a data folder, and what the model spec learns from them."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from pathlib import Path

from mtmm_core.components import check_arguments, get_component, list_components
from mtmm_core.errors import SpecError, UnknownComponentError, UsageError
from mtmm_core.userdata import FolderDataset, is_data_folder

HEAD_OF_TASK_KIND = {"classification": "classification", "binary": "binary", "regression": "regression"}


def load_dataset(data_config: dict[str, Any]) -> Any:
    """The data set named by the config's ``data`` section (its other keys are the factory's parameters)."""
    name = data_config["name"]
    params = {k: v for k, v in data_config.items() if k != "name"}
    if is_data_folder(name):  # a folder with dataset.yaml (docs/data.md)
        return FolderDataset(name, **params)
    try:
        component = get_component("dataset", name)
    except UnknownComponentError:
        _refuse_data_path(name)
        raise
    check_arguments(component, params, path="data")
    return component.factory(**params)


def _refuse_data_path(name: str) -> None:
    """A data set name that is a path, but not to a data folder: say what is wrong with the path."""
    path = Path(name).expanduser()
    registered = ", ".join(c.name for c in list_components("dataset")) or "(none)"
    usage = f"give a folder holding dataset.yaml (docs/data.md) or a registered data set ({registered})"
    if path.is_dir():
        raise UsageError(f"data set {name!r}: the folder {path} holds no dataset.yaml; {usage}")
    if path.exists():
        raise UsageError(f"data set {name!r}: {path} is a file, not a data folder; {usage}")
    if "/" in name or "\\" in name or name.startswith((".", "~")):
        raise UsageError(f"data set {name!r}: no such folder; {usage}")


def complete_model_spec(spec: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """Fill in what the data set knows: ``tasks`` from its task kinds when the spec leaves them
    out, and each regression head's ``target_mean``/``target_std`` from the training split."""
    spec = copy.deepcopy(spec)
    if "tasks" in spec and not isinstance(spec["tasks"], dict):
        raise SpecError("model.tasks", f"expected a mapping of task names to heads, got {type(spec['tasks']).__name__}")
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
