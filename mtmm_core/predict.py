"""``mtmm predict RUN_DIR --data PATH --out FILE``: a trained run's predictions for every sample of a data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.spec import build_model
from mtmm_core.data import load_dataset
from mtmm_core.evaluation import to_device


def load_trained_model(run_dir: str | Path, device: str = "cpu"):
    """The run's model (from ``model.yaml``) with its best weights (``best.pt``, else ``last.pt``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.yaml").is_file():
        raise FileNotFoundError(f"{run_dir / 'model.yaml'} does not exist: is {run_dir} an mtmm run folder?")
    model = build_model(yaml.safe_load((run_dir / "model.yaml").read_text())).to(device)
    weights = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    model.load_state_dict(load_checkpoint(weights, device)["model"])
    return model.eval()


@torch.no_grad()
def predict(run_dir: str | Path, data: str, out: str | Path, batch_size: int = 256,
            modalities: list[str] | None = None) -> Path:
    """Write ``out`` (.npz): per task the head's raw prediction ``<task>`` (logits or values),
    ``<task>.label`` (argmax class) for classification, ``<task>.probability`` for binary heads,
    and ``split`` and ``row`` (the row within its split, or the folder row for data folders)."""
    model = load_trained_model(run_dir)
    dataset = load_dataset({"name": data})
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
        if head.loss_kind == "contrastive":
            continue  # similarities within a batch are not per-sample predictions
        values = np.concatenate(collected[task])
        arrays[task] = values
        if head.loss_kind == "cross_entropy":
            arrays[f"{task}.label"] = values.argmax(axis=1)
        elif head.loss_kind == "bce":
            arrays[f"{task}.probability"] = 1.0 / (1.0 + np.exp(-values))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as file:  # np.savez would append .npz to a name without it
        np.savez(file, **arrays)
    return out
