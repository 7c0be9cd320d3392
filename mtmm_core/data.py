"""Data sets for training: a registered name or a data folder, and what the model spec learns from them."""

from __future__ import annotations

import copy
from typing import Any

from pathlib import Path

import numpy as np
import torch

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
    if str(name).lower().endswith((".csv", ".tsv", ".parquet", ".pq")):  # a table and its schema (docs/tables.md)
        from mtmm_core.databuild import table_dataset

        return table_dataset(name, **params)
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
    """Fill in what the data set knows: the encoders and their sizes (:func:`infer_encoders`), ``tasks``
    from its task kinds when the spec leaves them out, and each regression head's
    ``target_mean``/``target_std`` from the training split."""
    spec = infer_encoders(spec, dataset)
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


def default_encoder(info: dict[str, Any]) -> str | None:
    """The built-in encoder for a modality of the data (its ``modalities`` entry): ``tabular`` for
    features ``[F]`` or category ids ``[C]``, ``cnn`` for images ``[C, H, W]``, ``sequence_transformer``
    for frames ``[T, F]``, ``text`` for byte ids ``[T]`` (a vocabulary of at most 257); None otherwise."""
    shape, ids = list(info.get("shape") or []), info.get("dtype") == "int64"
    if ids:
        if info.get("kind") == "sequence":
            return "text" if max(info.get("vocab_sizes") or [0]) <= 257 else None
        return "tabular" if len(shape) == 1 else None
    return {1: "tabular", 2: "sequence_transformer", 3: "cnn"}.get(len(shape))


def data_sizes(info: dict[str, Any], longest: int | None) -> dict[str, Any]:
    """The encoder parameters a modality's data fixes: ``in_channels``, ``image_size`` (square images),
    ``in_features``, ``num_numeric``, ``categories`` and ``vocab_size`` (ids), ``max_len`` (the longest
    sequence; filled only where the encoder's default is shorter)."""
    shape, ids = list(info.get("shape") or []), info.get("dtype") == "int64"
    sizes: dict[str, Any] = {}
    if ids:
        vocab = [int(size) for size in info.get("vocab_sizes") or []]
        if vocab and info.get("kind") == "sequence":
            sizes["vocab_size"] = vocab[0]
        elif vocab:
            sizes.update(num_numeric=0, categories=vocab)
    elif len(shape) == 3:
        sizes["in_channels"] = shape[0]
        if shape[1] == shape[2]:
            sizes["image_size"] = shape[1]
    elif shape:
        sizes["in_features"] = shape[-1]
        if len(shape) == 1:
            sizes["num_numeric"] = shape[0]
    if len(shape) == 2 and shape[0] is not None:
        longest = shape[0]
    if longest is not None and (len(shape) == 2 or (ids and info.get("kind") == "sequence")):
        sizes["max_len"] = max(1, int(longest))
    return sizes


def infer_encoders(spec: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """A copy of the model ``spec`` with what the data fixes filled in: a modality of the data without an
    encoder gets its :func:`default_encoder` (none for a shape no built-in encoder takes: the fit check
    then asks for one); an encoder entry without ``name`` gets the default one; and each encoder of a modality of the data gets the :func:`data_sizes` its factory
    accepts and the spec leaves out (``max_len`` only where the factory's default is too short). A
    size the spec does give is kept: ``require_model_fit`` then names a wrong one. Without
    ``fusion``, ``concat``."""
    import inspect

    spec = copy.deepcopy(spec)
    modalities = dict(getattr(dataset, "modalities", {}) or {})
    stats = dataset.sequence_stats() if callable(getattr(dataset, "sequence_stats", None)) else {}
    spec.setdefault("encoders", {})
    spec.setdefault("fusion", {"name": "concat"})
    if not isinstance(spec["encoders"], dict):
        return spec
    for modality, info in modalities.items():
        if modality not in spec["encoders"] and default_encoder(info):
            spec["encoders"][modality] = {"name": default_encoder(info)}
    for modality, entry in list(spec["encoders"].items()):
        info = modalities.get(modality)
        if isinstance(entry, str):
            entry = spec["encoders"][modality] = {"name": entry}
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            _absolute_file_params(entry, _file_params(entry["name"]))
        if info is None or not isinstance(entry, dict):
            continue
        if "name" not in entry and default_encoder(info):
            entry["name"] = default_encoder(info)
        try:
            component = get_component("encoder", entry.get("name"))
        except Exception:  # noqa: BLE001 - an unknown encoder: building the model names it
            continue
        parameters = inspect.signature(component.factory).parameters
        longest = stats.get(modality, {}).get("longest")
        for key, value in data_sizes(info, longest).items():
            if key not in parameters or key in entry:
                continue
            default = parameters[key].default
            if key == "max_len" and isinstance(default, int) and default >= value:
                continue  # the default holds the data's longest sequence
            entry[key] = value
    return spec


def _file_params(name: str) -> list[str]:
    """The parameters the encoder ``name`` registered as files or folders (``file_params``); none if unknown."""
    try:
        return list(get_component("encoder", name).metadata.get("file_params", ()))
    except Exception:  # noqa: BLE001 - an unknown encoder: building the model names it
        return []


def _absolute_file_params(entry: dict[str, Any], names: Any) -> None:
    """Make the encoder ``entry``'s file and folder parameters (its component's ``file_params``, e.g. the
    ``hf`` encoder's ``path``) absolute where they name an existing relative path, so the run's
    model.yaml rebuilds the model from any working folder (``load_run``, ``mtmm predict``)."""
    for name in names or ():
        value = entry.get(name)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() \
                and Path(value).expanduser().exists():
            entry[name] = str(Path(value).expanduser().resolve())
