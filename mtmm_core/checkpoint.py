"""Checkpoints: written atomically (temporary file or folder, then rename), loaded without unpickling code.

``last.pt`` and ``best.pt`` are single files (:func:`save_checkpoint`, :func:`load_checkpoint`); under
``train.strategy: fsdp`` the model and optimiser part of ``last.pt`` is a sharded folder written with
:mod:`torch.distributed.checkpoint` (:func:`save_sharded`, :func:`load_sharded`), which loads on any number
of processes."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) to ``path`` atomically.

    A crash mid-write leaves the previous checkpoint intact: the data goes to a
    temporary file in the same folder, is flushed to disk, then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: a file that would run pickled code is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a safe mtmm checkpoint (loaded with weights_only=True): {error}") from error


# -- sharded checkpoints (train.strategy: fsdp) ---------------------------------------------------------
#: What the metadata of a sharded checkpoint may name: torch.distributed.checkpoint's own records, torch
#: dtypes and sizes. Anything else (a function, an arbitrary class) is refused before it can run.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": None,  # None: any name in the module (dataclasses and enums)
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Reads a sharded checkpoint's ``.metadata`` naming only :data:`_METADATA_GLOBALS` and torch dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _METADATA_GLOBALS.get(module, set())
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if module in _METADATA_GLOBALS and (allowed is None or name in allowed) or is_dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a sharded checkpoint's metadata")


def _read_metadata(path: Path) -> Any:
    """The ``.metadata`` of the sharded checkpoint folder ``path``, read with :class:`_MetadataUnpickler`."""
    with open(path / ".metadata", "rb") as file:
        try:
            return _MetadataUnpickler(file).load()
        except Exception as error:
            raise ValueError(f"{path} is not a safe mtmm sharded checkpoint: {error}") from error


def _safe_reader(path: Path) -> Any:
    """A ``FileSystemReader`` whose metadata is unpickled with :class:`_MetadataUnpickler` (tensors are read
    by torch.distributed.checkpoint with ``weights_only=True``)."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = _read_metadata(path)
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def _safe_planner() -> Any:
    """A load planner that reads the non-tensor entries (e.g. the optimiser's learning rate) with
    ``weights_only=True``."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._nested_dict import set_element

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafePlanner()


@contextlib.contextmanager
def _one_process_quietly() -> Iterator[None]:
    """Without a process group torch.distributed.checkpoint warns that it assumes one process: it is right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | Path,
                 is_main: bool = True) -> Path:
    """Every process writes its shard of the model's and the optimiser's state into the folder ``path``
    (``torch.distributed.checkpoint``), atomically: into ``.NAME.tmp`` beside it, which rank 0 renames
    once every shard is written (``dcp.save`` returns on rank 0 after the others finished)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _one_process_quietly():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(temporary))
    if is_main:
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    return path


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """Load a folder written by :func:`save_sharded` into ``model`` and ``optimizer``, on any number of
    processes (the shards are redistributed to the model's current layout, sharded or whole).
    Nothing pickled is executed: see :func:`_safe_reader` and :func:`_safe_planner`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"no sharded checkpoint at {path} (its .metadata is missing)")
    _read_metadata(path)  # refused here, with its own error, before torch.distributed.checkpoint wraps it
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with _one_process_quietly():
        dcp.load(state, storage_reader=_safe_reader(path), planner=_safe_planner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
