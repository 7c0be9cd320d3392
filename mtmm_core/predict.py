"""``mtmm predict RUN_DIR --data PATH --out FILE``: a trained run's predictions for every sample of a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.config import check_output_file, read_run_model_spec
from mtmm_core.data import load_dataset
from mtmm_core.errors import SpecError, UsageError
from mtmm_core.evaluation import select_modalities, to_device
from mtmm_core.model import MultimodalMultitaskModel
from mtmm_core.spec import build_model


#: The files a run's weights are read from, in order of preference: a training run's checkpoints, then the
#: weights of a folder written by ``mtmm export --format safetensors`` (docs/export.md).
WEIGHT_FILES = ("best.pt", "last.pt", "model.safetensors")


def run_weights(run_dir: str | Path) -> Path:
    """The weights to evaluate a run with: ``best.pt``, else ``last.pt``, else ``model.safetensors`` (an
    exported folder); a UsageError when there is none."""
    run_dir = Path(run_dir)
    for name in WEIGHT_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise UsageError(f"{run_dir} holds no checkpoint (best.pt or last.pt) and no model.safetensors: "
                     "the run did not finish an epoch")


def load_trained_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """The run's model (from ``model.yaml``) with its best weights (``best.pt``, else ``last.pt``, else the
    ``model.safetensors`` of an exported folder). Neither format can run code when it is read: checkpoints
    are loaded with ``weights_only=True``, and a safetensors file holds tensors only."""
    run_dir = Path(run_dir)
    spec = read_run_model_spec(run_dir)
    weights = run_weights(run_dir)
    try:
        model = build_model(spec).to(device)
    except SpecError as error:
        raise SpecError(str(run_dir / "model.yaml"), str(error)) from error
    if weights.suffix == ".safetensors":
        _load_safetensors(model, weights, device)
        return model.eval()
    state = load_checkpoint(weights, device)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as error:
        reason = " ".join(str(error).split())
        raise UsageError(f"{weights} does not fit the model of {run_dir / 'model.yaml'}: {reason[:300]}") from error
    return model.eval()


def _load_safetensors(model: MultimodalMultitaskModel, weights: Path, device: str | torch.device) -> None:
    """Load ``weights`` (written by ``safetensors.torch.save_model``) into ``model``: every tensor must fit."""
    try:
        import safetensors
        from safetensors.torch import load_model
    except ImportError as error:
        raise UsageError(f"{weights} needs the safetensors package to be read: pip install 'mtmm[export]'") from error
    try:
        load_model(model, weights, strict=True, device=str(torch.device(device)))
    except safetensors.SafetensorError as error:
        raise UsageError(f"{weights} is not a valid safetensors file: {error}") from error
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise UsageError(f"{weights} does not fit the model of {weights.parent / 'model.yaml'}: "
                         f"{reason[:300]}") from error


@torch.no_grad()
def predict_arrays(model: MultimodalMultitaskModel, dataset: Any, batch_size: int = 256,
                   modalities: list[str] | None = None) -> dict[str, np.ndarray]:
    """Every sample of every split of ``dataset`` through ``model`` (in eval mode), as arrays of N rows:

    - ``split`` (str) and ``row`` (the row within its split; the folder's row for a data folder);
    - ``<task>``: the head's output: logits ``[N, C]`` of a classification head; a binary head's
      logits ``[N]`` (``[N, K]`` for K labels); a regression head's values ``[N]`` (``[N, K]``),
      in the units of the data's targets (the head undoes the standardisation it trains on);
    - ``<task>.label`` ``[N]``: the predicted class (argmax of the logits), not the true label;
    - ``<task>.probability``: the sigmoid of a binary head's logits, the shape of ``<task>``.

    A task whose loss needs no target (e.g. ``contrastive``) has no per-sample prediction and is left out.
    """
    modalities = select_modalities(modalities, model.modalities)
    model.eval()
    device = next(model.parameters()).device
    collected: dict[str, list[np.ndarray]] = {task: [] for task in model.tasks}
    splits, rows = [], []
    for name, split in dataset.splits.items():
        for start in range(0, len(split), batch_size):
            local = np.arange(start, min(start + batch_size, len(split)))
            batch = to_device(split.batch(local), device, modalities)
            output = model(batch.inputs, batch.lengths, batch.present)
            for task in model.tasks:
                collected[task].append(output.predictions[task].float().cpu().numpy())
            splits.extend([name] * len(local))
            rows.append(split.indices[local] if hasattr(split, "indices") else local)
    arrays: dict[str, np.ndarray] = {"split": np.array(splits), "row": np.concatenate(rows)}
    for task, head in model.heads.items():
        if not model.losses[task].needs_target:
            continue  # similarities within a batch are not per-sample predictions
        values = np.concatenate(collected[task])
        arrays[task] = values
        if head.loss_kind == "cross_entropy":
            arrays[f"{task}.label"] = values.argmax(axis=1)
        elif head.loss_kind == "bce":
            arrays[f"{task}.probability"] = 1.0 / (1.0 + np.exp(-values))
    return arrays


def predict(run_dir: str | Path, data: str, out: str | Path, batch_size: int = 256,
            modalities: list[str] | None = None) -> Path:
    """Write ``out`` (.npz) with :func:`predict_arrays` of the run's best weights on the data set ``data``
    (a registered name or a data folder); the layout is documented in docs/runs.md. ``data`` may also be
    a table of new raw rows (.csv, .tsv, .parquet) for a run trained on a built table: its rows are
    preprocessed as the run's training data was (docs/tables.md), one split ``rows`` whose ``row`` is
    the table's row, and each classification task also gets ``<task>.class``, the predicted class name."""
    out = check_output_file(out, example="predictions.npz")
    model = load_trained_model(run_dir)
    select_modalities(modalities, model.modalities)  # a bad subset fails before the data loads
    from mtmm_core.databuild.build import is_table

    if is_table(data):
        from mtmm_core.databuild import RowsDataset, run_preprocessing

        preprocessing = run_preprocessing(run_dir)
        arrays = predict_arrays(model, RowsDataset(data, preprocessing), batch_size, modalities)
        for task, target in preprocessing["targets"].items():
            if target["kind"] == "classification" and f"{task}.label" in arrays:
                arrays[f"{task}.class"] = np.asarray(target["classes"])[arrays[f"{task}.label"]]
    else:
        arrays = predict_arrays(model, load_dataset({"name": data}), batch_size, modalities)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as file:  # np.savez would append .npz to a name without it
        np.savez(file, **arrays)
    return out
