"""``mtmm export RUN_DIR --format safetensors|onnx|torchscript``: a trained run's model, ready to ship.

- ``safetensors``: the best weights (``model.safetensors``) with ``model.yaml`` and ``config.yaml``; the folder
  loads with :func:`mtmm_core.load_run`, ``mtmm predict`` and anything else that reads a run's weights.
- ``onnx`` and ``torchscript``: the model traced with flat tensor inputs (``<modality>``, ``<modality>.lengths``
  for a modality the data gives lengths for, ``<modality>.present``) and one output per task; the batch axis
  and a sequence's length axis are dynamic. Each export is checked: the saved file is run (onnxruntime,
  ``torch.jit.load``) on batches other than the traced one and must reproduce the PyTorch model.

Every folder holds ``export.json``: format, mtmm and torch versions, source run, modalities, tasks and, for
the traced formats, each input's and output's name, dtype and shape. docs/export.md describes the formats.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mtmm_core.config import read_run_config, read_run_model_spec
from mtmm_core.errors import UsageError
from mtmm_core.model import MultimodalMultitaskModel
from mtmm_core.predict import load_trained_model, run_weights
from mtmm_core.export.traced import ATOL, ONNX_OPSET, RTOL, _write_traced

__all__ = ["ATOL", "FORMATS", "MODEL_FILES", "ONNX_OPSET", "RTOL", "export_run"]

FORMATS = ("safetensors", "onnx", "torchscript")
INSTALL_HINT = "pip install 'mtmm[export]'"
#: The Python packages each format needs beyond torch (import names).
PACKAGES = {"safetensors": ("safetensors",), "onnx": ("onnx", "onnxruntime"), "torchscript": ()}
#: The file each format writes beside model.yaml, config.yaml (safetensors only) and export.json.
MODEL_FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}


def export_run(run_dir: str | Path, out: str | Path | None = None, format: str = "safetensors", *,
               force: bool = False) -> Path:
    """Export the run in ``run_dir`` (its best weights) to the folder ``out`` (default
    ``RUN_DIR/export-<format>``) and return that folder.

    ``out`` must be new or empty unless ``force``: then the files an export writes are replaced and any
    other file is left alone. The files are written to a temporary folder beside ``out`` first, so a
    failed export leaves ``out`` as it was. UsageErrors name a missing run, an unknown format, a missing
    optional package, or a model that the format cannot hold.
    """
    format = check_format(format)
    run_dir = Path(run_dir)
    read_run_model_spec(run_dir)  # a missing folder or model.yaml: a UsageError naming it
    config = read_run_config(run_dir) if format != "safetensors" else {}  # the traced formats need its data set
    weights = run_weights(run_dir)
    out = _output_folder(run_dir, out, format, force)
    require_packages(format)
    model = load_trained_model(run_dir, "cpu")
    record: dict[str, Any] = {
        "format": format,
        "mtmm_version": _version("mtmm"),
        "torch_version": torch.__version__,
        "source_run": str(run_dir.resolve()),
        "weights": weights.name,
        "files": [MODEL_FILES[format], "model.yaml", "export.json"],
        "modalities": model.modalities,
        "tasks": model.tasks,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        shutil.copyfile(run_dir / "model.yaml", staging / "model.yaml")
        if format == "safetensors":
            _write_safetensors(model, staging / MODEL_FILES[format])
            shutil.copyfile(run_dir / "config.yaml", staging / "config.yaml")
            record["files"].insert(2, "config.yaml")
        else:
            record.update(_write_traced(model, config, staging / MODEL_FILES[format], format))
        (staging / "export.json").write_text(json.dumps(record, indent=2) + "\n")
        out.mkdir(exist_ok=True)
        for name in record["files"]:
            shutil.copymode(staging / "export.json", staging / name)  # safetensors writes its file owner-only
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def check_format(format: str) -> str:
    """``format`` if it is one of :data:`FORMATS`, else a UsageError listing them."""
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    return format


def require_packages(format: str) -> None:
    """A UsageError naming the packages ``format`` needs that do not import, with the command installing them."""
    missing = []
    for name in PACKAGES[format]:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise UsageError(f"--format {format} needs {' and '.join(missing)}, which {verb} not installed: {INSTALL_HINT}")


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _output_folder(run_dir: Path, out: str | Path | None, format: str, force: bool) -> Path:
    """The folder to export to, checked: not the run folder itself, not a file, new or empty unless ``force``."""
    out = Path(out) if out is not None else run_dir / f"export-{format}"
    if out.exists() and out.resolve() == run_dir.resolve():
        raise UsageError(f"--out {out} is the run folder itself; export to another folder (default "
                         f"{run_dir / f'export-{format}'})")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"{out} already exists and is not empty: choose another --out, or add --force to "
                         "replace the files an export writes there")
    return out


# -- safetensors ------------------------------------------------------------------------------------------

def _write_safetensors(model: MultimodalMultitaskModel, path: Path) -> None:
    """The model's state dict (parameters and buffers) as safetensors; tied tensors are stored once."""
    from safetensors.torch import save_model

    save_model(model, str(path), metadata={"format": "pt"})
