"""Cost per training step of each weighting relative to equal weighting, on CPU (or CUDA if present).

    python benchmarks/weighting_cost.py            # all built-in weightings, both gradient modes
    python benchmarks/weighting_cost.py --reps 20 --batch 64

A small model (cnn image encoder + sequence_transformer audio encoder, concat fusion,
3 tasks); one step = forward, task losses, ``weighted_backward``, optimizer step.
Gradient-level strategies run with ``gradient_mode`` "representation" (gradients on
the fused features) and "parameters" (gradients on all encoder and fusion parameters).
Writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from pathlib import Path
from typing import Callable

import torch
from multitask_common import time_ms

from mtmm_core import build_model
from mtmm_core.weighting import weighted_backward
from mtmm_plugins.weightings import BUILTIN_WEIGHTINGS

RESULTS = Path(__file__).resolve().parent / "results"
NEEDS_PARAMS = {"static": {"weights": [1.0, 1.0, 1.0]}}


def make_model(name: str, mode: str | None, dim: int, device: str):
    params = dict(NEEDS_PARAMS.get(name, {}))
    if mode is not None:
        params["gradient_mode"] = mode
    spec = {"dim": dim,
            "encoders": {"image": {"name": "cnn"}, "audio": {"name": "sequence_transformer", "in_features": 13}},
            "fusion": {"name": "concat"},
            "tasks": {"digit": {"head": "classification", "num_classes": 10}, "match": {"head": "binary"},
                      "size": {"head": "regression"}},
            "weighting": {"name": name, **params}}
    return build_model(spec).to(device)


def make_step(model, mode: str | None, inputs: dict, targets: dict) -> Callable[[], None]:
    """One training step: forward, task losses, weighted_backward, SGD step (+ FAMO's after_step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    shared = [*model.encoders.parameters(), *model.fusion.parameters()]

    def train_step() -> None:
        optimizer.zero_grad()
        output = model(inputs)
        losses = model.task_losses(output, targets)
        weighted_backward(model.weighting, losses, shared if mode == "parameters" else output.fused)
        optimizer.step()
        if hasattr(model.weighting, "after_step"):  # FAMO: the losses after the update, same batch
            with torch.no_grad():
                model.weighting.after_step(model.task_losses(model(inputs), targets))

    return train_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # steadier timings on a shared machine
    torch.manual_seed(0)
    inputs = {"image": torch.randn(args.batch, 1, 28, 28, device=device),
              "audio": torch.randn(args.batch, 50, 13, device=device)}
    targets = {"digit": torch.randint(0, 10, (args.batch,), device=device),
               "match": torch.rand(args.batch, device=device).round(), "size": torch.randn(args.batch, device=device)}
    steps = {}
    for name, factory in BUILTIN_WEIGHTINGS.items():
        modes = ["representation", "parameters"] if getattr(factory, "gradient_level", False) else [None]
        for mode in modes:
            label = name if mode is None else f"{name} ({mode})"
            steps[label] = (name, mode, make_step(make_model(name, mode, args.dim, device), mode, inputs, targets))
    # Round-robin over the strategies, so a busy machine slows them all alike; median per strategy.
    samples = {label: [] for label in steps}
    for _ in range(args.reps + 1):
        for label, (_, _, train_step) in steps.items():
            samples[label].append(time_ms(train_step, 1, device))
    rows, baseline = [], statistics.median(samples["equal"][1:])
    for label, (name, mode, _) in steps.items():
        ms = statistics.median(samples[label][1:])
        rows.append(dict(weighting=name, gradient_mode=mode, gradient_level=mode is not None, ms=ms,
                         relative_to_equal=ms / baseline))
        print(f"{label:<32}{ms:>9.2f} ms {ms / baseline:>7.2f}x equal")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"weighting_cost_{device}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"device": device, "batch": args.batch, "dim": args.dim, "reps": args.reps,
                                        "torch": torch.__version__}, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
