"""Section 6: one optimiser step of the default model with ``MTMM_KERNEL_BACKEND=torch`` and ``auto``,
eager and compiled."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import traceback
import warnings
from typing import Any, Callable

import numpy as np
import torch

from .common import ENV_BACKEND, Context, cuda_kernels, one_line, peak_extra_mib, sync, time_calls


# ============================================================================= section 6: training step


def section_train_step(ctx: Context) -> dict[str, Any]:
    from mtmm_core.config import load_config
    from mtmm_core.data import complete_model_spec, load_dataset
    from mtmm_core.evaluation import to_device
    from mtmm_core.spec import build_model
    from mtmm_core.weighting import weighted_backward

    a = ctx.args
    device = torch.device(ctx.device)
    config = load_config(a.config)
    settings = config.get("train", {})
    dataset = load_dataset(config["data"])
    spec = complete_model_spec(config["model"], dataset)
    torch.manual_seed(int(settings.get("seed", 0)))
    model = build_model(spec).to(device)
    initial = copy.deepcopy(model.state_dict())
    split = dataset.splits["train"]
    lr, weight_decay = float(settings.get("lr", 2e-3)), float(settings.get("weight_decay", 0.01))
    clip = float(settings.get("grad_clip", 1.0))
    autocast = ctx.cuda  # the trainer runs the forward and the losses under bf16 autocast on CUDA
    out: dict[str, Any] = {
        "config": str(a.config), "data": config["data"].get("name"), "tasks": list(model.tasks),
        "parameters": sum(p.numel() for p in model.parameters()), "autocast_bf16": autocast,
        "what": "forward + task losses (bf16 autocast on CUDA), weighted backward, grad clip, AdamW step "
                "on one fixed batch already on the device; no data loading, no logging",
        "runs": [], "not_run": [],
    }
    variants = [("torch", False), ("auto", False)]
    if a.compile_mode == "on":
        variants += [("torch", True), ("auto", True)]
    else:
        out["compile"] = "skipped (--compile off; the default in --dry-run)"
    previous_env = os.environ.get(ENV_BACKEND)
    try:
        for batch_size in a.train_batches:
            rows = np.arange(min(batch_size, len(split)))
            batch = to_device(split.batch(rows), device, tasks=model.tasks)
            for backend, compiled in variants:
                label = f"B={len(rows)} backend={backend}{' compile' if compiled else ''}"
                if ctx.budget.spent():
                    out["not_run"].append(label)
                    continue
                os.environ[ENV_BACKEND] = backend
                run = {"batch": int(len(rows)), "backend_env": backend, "compile": compiled}
                try:
                    run.update(time_train_variant(ctx, model, initial, batch, compiled, lr, weight_decay, clip,
                                                  autocast, weighted_backward))
                except Exception as error:  # noqa: BLE001  (compile may fail: record it, keep going)
                    run["error"] = one_line(error)
                    run["traceback"] = traceback.format_exc()[-3000:]
                    if compiled:
                        torch._dynamo.reset()
                out["runs"].append(run)
                ctx.log(f"train_step {label}: " + (f"{run['time']['median_ms']:.3f} ms" if "time" in run
                                                   else f"error {run.get('error')}"))
    finally:
        if previous_env is None:
            os.environ.pop(ENV_BACKEND, None)
        else:
            os.environ[ENV_BACKEND] = previous_env
    by_key = {(r["batch"], r["backend_env"], r["compile"]): r.get("time", {}).get("median_ms") for r in out["runs"]}
    out["speedups"] = []
    for batch_size in sorted({r["batch"] for r in out["runs"]}):
        base = by_key.get((batch_size, "torch", False))
        for backend, compiled in variants[1:]:
            ms = by_key.get((batch_size, backend, compiled))
            if base and ms:
                out["speedups"].append({"batch": batch_size, "variant": f"{backend}{' + compile' if compiled else ''}",
                                        "over_torch_eager": base / ms})
    return out


def trainer_forward() -> tuple[Callable[[Any, Any], Any], str]:
    """``forward_and_losses(model, batch) -> (output, losses)``: the trainer's own (what ``train.compile``
    compiles) where it has one, else the same two calls written here."""
    try:
        from mtmm_core.trainer import forward_and_losses

        return forward_and_losses, "mtmm_core.trainer.forward_and_losses"
    except ImportError:
        def forward_and_losses(model, batch):
            output = model(batch.inputs, batch.lengths, batch.present)
            return output, model.task_losses(output, batch.targets, batch.task_masks)

        return forward_and_losses, "gpu_suite's copy (mtmm_core.trainer has no forward_and_losses)"


def value_checks_off() -> tuple[Callable[[], Any], bool]:
    """A factory of ``value_checks(False)`` contexts (the trainer's setting once a batch is checked on the
    host), or of null contexts where mtmm_kernels has no such switch."""
    try:
        from mtmm_kernels._validate import value_checks
    except ImportError:
        return contextlib.nullcontext, False
    return (lambda: value_checks(False)), True


def syncs_in(fn: Callable[[], Any], device: str) -> dict[str, Any] | None:
    """Host synchronisations in one call of ``fn``, counted by ``torch.cuda.set_sync_debug_mode("warn")``."""
    if device != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    messages = [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"count": len(messages), "first": messages[:5]}


def time_train_variant(ctx: Context, model: torch.nn.Module, initial: dict, batch: Any, compiled: bool, lr: float,
                       weight_decay: float, clip: float, autocast: bool, weighted_backward: Callable) -> dict[str, Any]:
    a = ctx.args
    device = ctx.device
    model.load_state_dict(initial)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    result: dict[str, Any] = {}
    forward_and_losses, result["forward"] = trainer_forward()
    checks_off, result["value_checks_off"] = value_checks_off()
    forward = forward_and_losses
    if compiled:
        torch._dynamo.reset()
        forward = torch.compile(forward_and_losses, backend=a.compile_backend)
    last: dict[str, torch.Tensor] = {}

    def train_step() -> None:
        """The trainer's step on a checked batch: value checks off, forward and losses under autocast,
        the weighting's backward, clipping, AdamW (no scheduler, no logging, no loss read-back)."""
        with checks_off():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                output, losses = forward(model, batch)
            present = model.labelled_tasks(output, batch.targets, batch.task_masks)
            regularization = model.regularization()
            optimizer.zero_grad(set_to_none=True)
            total = weighted_backward(model.weighting, losses.float(), output.fused, present)
            if regularization is not None and regularization.requires_grad:
                regularization.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
        last["total"] = total

    began = time.perf_counter()
    train_step()  # compiles, autotunes
    sync(device)
    result["first_step_s"] = time.perf_counter() - began
    graphs_before = dynamo_unique_graphs() if compiled else None
    stats = time_calls(train_step, device, reps=a.train_reps, warmup=a.warmup, inner=1)
    result["time"] = stats
    if compiled:
        # Graph breaks at data-dependent branches compile new frames when a branch first goes the other
        # way (modality dropout draws differ per step): then the timed steps included compilation.
        graphs_after = dynamo_unique_graphs()
        result["unique_graphs_after_first_step"] = graphs_before
        result["unique_graphs_after_timing"] = graphs_after
        result["compiled_during_timing"] = (graphs_before is not None and graphs_after is not None
                                            and graphs_after > graphs_before)
    steps = max(a.train_reps, 1)
    sync(device)
    began = time.perf_counter()
    for _ in range(steps):  # back-to-back, one sync at the end: throughput with the host free to run ahead
        train_step()
    sync(device)
    result["back_to_back_ms"] = (time.perf_counter() - began) * 1e3 / steps
    result["samples_per_s"] = batch_size_of(batch) / (stats["median_ms"] * 1e-3)
    result["final_total_loss"] = float(last["total"].detach().float())
    result["loss_finite"] = math.isfinite(result["final_total_loss"])
    if ctx.cuda:
        try:
            result["kernels_per_step"] = cuda_kernels(train_step, device, top=8)
        except Exception as error:  # noqa: BLE001
            result["kernels_per_step"] = {"error": one_line(error)}
        result["peak_mib"] = peak_extra_mib(train_step, device)
        try:
            result["host_syncs_per_step"] = syncs_in(train_step, device)
        except Exception as error:  # noqa: BLE001
            result["host_syncs_per_step"] = {"error": one_line(error)}
    if compiled and a.explain:
        try:
            with checks_off(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                explanation = torch._dynamo.explain(forward_and_losses)(model, batch)
            result["graph_breaks"] = explanation.graph_break_count
            result["graphs"] = explanation.graph_count
            reasons: dict[str, int] = {}
            for r in explanation.break_reasons:
                text = str(getattr(r, "reason", r)).strip().splitlines()
                key = text[0][:200] if text else "?"
                reasons[key] = reasons.get(key, 0) + 1
            result["break_reasons"] = [{"reason": k, "count": v} for k, v in
                                       sorted(reasons.items(), key=lambda item: -item[1])]
        except Exception as error:  # noqa: BLE001
            result["explain_error"] = one_line(error)
    return result


def dynamo_unique_graphs() -> int | None:
    """Graphs Dynamo has compiled so far in this process (None where the counter is not available)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001  (a private counter: absent in some versions)
        return None


def batch_size_of(batch: Any) -> int:
    for value in batch.inputs.values():
        return int(value.shape[0])
    return 0
