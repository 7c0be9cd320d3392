"""Sections 4 and 5: the attention table (fused vs eager vs SDPA) and the multitask-loss table (fused vs eager)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .common import DTYPES_BY_NAME, Context, cuda_kernels, one_line, peak_extra_mib, time_calls


# ============================================================================= section 4: attention table


ATTENTION_TARGETS = {  # kernel notes: fused fwd+bwd speed-ups over eager and SDPA
    "vs_eager": {"T": 1.5, "S": 3.0, "M": 3.0, "L": 3.0},
    "vs_sdpa": {"S": 1.3, "M": 1.3, "L": 1.0},
}


def section_attention(ctx: Context) -> dict[str, Any]:
    from attention_common import (SHAPES, eager_attention, flops, floor_bytes, forward_backward, forward_only,
                                  make_inputs, sdpa_attention, sdpa_backend)

    from mtmm_kernels import cross_modal_attention

    a = ctx.args
    device = ctx.device
    dtype = DTYPES_BY_NAME[a.attn_dtype]
    backend = "triton" if ctx.cuda else "torch"
    impls: dict[str, Callable[[Any], Any]] = {
        "fused": lambda x: cross_modal_attention(x.q, x.k, x.v, key_lengths=x.key_lengths, backend=backend),
        "eager": lambda x: eager_attention(x.q, x.k, x.v, x.key_mask),
        "sdpa": lambda x: sdpa_attention(x.q, x.k, x.v, x.key_mask),
    }
    if a.attn_compile:
        compiled = torch.compile(eager_attention, dynamic=False)
        impls["compile"] = lambda x: compiled(x.q, x.k, x.v, x.key_mask)
    bandwidth = (ctx.report["sections"].get("ceilings", {}).get("result") or {}).get("copy_gbs")
    out: dict[str, Any] = {"dtype": a.attn_dtype, "fused_is": "triton kernel" if ctx.cuda else "PyTorch fallback",
                           "copy_gbs_used": bandwidth, "sdpa_backend": {}, "rows": [], "masking": [],
                           "fused_kernels_fwd_bwd": {}, "not_run": [], "targets": []}
    for name in a.shapes.split(","):
        shape = SHAPES[name.strip()]
        if a.batch:
            shape = shape.with_batch(a.batch)
        if ctx.budget.spent():
            out["not_run"].append(shape.name)
            continue
        x = make_inputs(shape, dtype, device)
        try:
            out["sdpa_backend"][shape.name] = sdpa_backend(x)
        except Exception as error:  # noqa: BLE001
            out["sdpa_backend"][shape.name] = f"unknown ({one_line(error)})"
        times: dict[tuple[str, str], float] = {}
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            nbytes = floor_bytes(shape, x.q.element_size(), backward)
            for impl, fn in impls.items():
                step = (lambda fn=fn: forward_backward(fn, x)) if backward else (lambda fn=fn: forward_only(fn, x))
                row: dict[str, Any] = {"shape": shape.name, "B": shape.B, "H": shape.H, "Lq": shape.Lq,
                                       "Lk": shape.Lk, "d": shape.d, "mode": mode, "impl": impl,
                                       "flops": flops(shape, backward), "floor_bytes": nbytes}
                try:
                    step()  # compile / autotune outside the timing
                    stats = time_calls(step, device, reps=a.reps, warmup=a.warmup, sample_ms=a.sample_ms)
                    row["time"] = stats
                    ms = stats["median_ms"]
                    times[(impl, mode)] = ms
                    row.update(ms=ms, tflops=row["flops"] / (ms * 1e-3) / 1e12, gbs=nbytes / (ms * 1e-3) / 1e9,
                               x_floor=(ms * 1e-3) / (nbytes / (bandwidth * 1e9)) if bandwidth else None,
                               peak_mib=peak_extra_mib(step, device))
                except Exception as error:  # noqa: BLE001  (a failing baseline must not stop the table)
                    row["error"] = one_line(error)
                out["rows"].append(row)
            fused_ms = times.get(("fused", mode))
            for row in out["rows"][-len(impls):]:
                if fused_ms and "ms" in row:
                    row["fused_speedup"] = row["ms"] / fused_ms  # above 1: fused is faster
            ctx.log(f"attention {shape.name} {mode}: " + ", ".join(
                f"{impl} {times[(impl, mode)]:.3f} ms" for impl in impls if (impl, mode) in times))
        if ctx.cuda:
            try:
                out["fused_kernels_fwd_bwd"][shape.name] = cuda_kernels(
                    lambda: forward_backward(impls["fused"], x), device)
            except Exception as error:  # noqa: BLE001
                out["fused_kernels_fwd_bwd"][shape.name] = {"error": one_line(error)}
        out["masking"].append(masking_row(ctx, shape, dtype, backend))
        for target_name, baseline in (("vs_eager", "eager"), ("vs_sdpa", "sdpa")):
            target = ATTENTION_TARGETS[target_name].get(shape.name)
            fused_ms, other = times.get(("fused", "fwd+bwd")), times.get((baseline, "fwd+bwd"))
            if target and fused_ms and other:
                out["targets"].append({"what": f"{shape.name} fused fwd+bwd speed-up {target_name}",
                                       "value": other / fused_ms, "target": f">= {target}",
                                       "met": other / fused_ms >= target})
        fwd, both = times.get(("fused", "fwd")), times.get(("fused", "fwd+bwd"))
        if shape.name == "L" and fwd and both:
            forward_tflops = flops(shape, False) / (fwd * 1e-3) / 1e12
            backward_tflops = (flops(shape, True) - flops(shape, False)) / max((both - fwd) * 1e-3, 1e-12) / 1e12
            out["targets"].append({"what": "L fused forward TFLOP/s", "value": forward_tflops, "target": ">= 320",
                                   "met": forward_tflops >= 320})
            out["targets"].append({"what": "L fused backward TFLOP/s (fwd+bwd - fwd)", "value": backward_tflops,
                                   "target": ">= 200", "met": backward_tflops >= 200})
        if shape.name in ("S", "M") and bandwidth:
            for mode, limit in (("fwd", 2.0), ("fwd+bwd", 3.0)):
                ms = times.get(("fused", mode))
                if ms:
                    ratio = (ms * 1e-3) / (floor_bytes(shape, x.q.element_size(), mode != "fwd") / (bandwidth * 1e9))
                    out["targets"].append({"what": f"{shape.name} fused {mode} x HBM floor", "value": ratio,
                                           "target": f"<= {limit}", "met": ratio <= limit})
        del x
        if ctx.cuda:
            torch.cuda.empty_cache()
    for m in out["masking"]:
        if "all_valid_over_unmasked" in m:
            out["targets"].append({"what": f"{m['shape']} all-valid / unmasked", "value": m["all_valid_over_unmasked"],
                                   "target": "<= 1.10", "met": m["all_valid_over_unmasked"] <= 1.10})
            out["targets"].append({"what": f"{m['shape']} 50% valid / all-valid", "value": m["half_over_all_valid"],
                                   "target": "<= 0.65", "met": m["half_over_all_valid"] <= 0.65})
    return out


def masking_row(ctx: Context, shape: Any, dtype: torch.dtype, backend: str) -> dict[str, Any]:
    """Fused fwd+bwd unmasked, with every key valid, and with half the keys valid."""
    from attention_common import forward_backward, make_inputs

    from mtmm_kernels import cross_modal_attention

    try:
        x = make_inputs(shape, dtype, ctx.device)
        full = torch.full_like(x.key_lengths, shape.Lk)
        half = torch.full_like(x.key_lengths, max(1, shape.Lk // 2))
        row: dict[str, Any] = {"shape": shape.name}
        for name, lengths in (("unmasked", None), ("all_valid", full), ("half_valid", half)):
            def fn(x_, lengths=lengths):
                return cross_modal_attention(x_.q, x_.k, x_.v, key_lengths=lengths, backend=backend)

            step = (lambda fn=fn: forward_backward(fn, x))
            step()
            stats = time_calls(step, ctx.device, reps=ctx.args.reps, warmup=ctx.args.warmup,
                               sample_ms=ctx.args.sample_ms)
            row[f"{name}_ms"] = stats["median_ms"]
            row[f"{name}_time"] = stats
        row["all_valid_over_unmasked"] = row["all_valid_ms"] / row["unmasked_ms"]
        row["half_over_all_valid"] = row["half_valid_ms"] / row["all_valid_ms"]
        return row
    except Exception as error:  # noqa: BLE001
        return {"shape": shape.name, "error": one_line(error)}


# ============================================================================= section 5: multitask-loss table


def section_multitask_loss(ctx: Context) -> dict[str, Any]:
    from multitask_common import Case, eager, floor_bytes, make_inputs, step

    from mtmm_kernels import multitask_loss

    a = ctx.args
    dtype = DTYPES_BY_NAME[a.loss_dtype]
    backend = "triton" if ctx.cuda else "torch"

    def fused(x):
        return multitask_loss(x.preds, x.targets, x.kinds, task_masks=x.masks, backend=backend)[0]

    impls = {"fused": fused, "eager": eager}
    bandwidth = (ctx.report["sections"].get("ceilings", {}).get("result") or {}).get("copy_gbs")
    if a.dry_run:
        cases = [Case(2, 64, 10), Case(4, 32, 100)]
    else:
        cases = [Case(t, b, c) for t in a.loss_tasks for b in a.loss_batches for c in a.loss_classes]
    out: dict[str, Any] = {"dtype": a.loss_dtype, "fused_is": "triton kernel" if ctx.cuda else "PyTorch fallback",
                           "copy_gbs_used": bandwidth, "rows": [], "not_run": [], "targets": []}
    for case in cases:
        if ctx.budget.spent():
            out["not_run"].append(case.name)
            continue
        torch.manual_seed(0)
        x = make_inputs(case, dtype, ctx.device)
        for mode in ("fwd", "fwd+bwd"):
            backward = mode == "fwd+bwd"
            nbytes = floor_bytes(x, backward)
            times = {}
            for impl, fn in impls.items():
                call = (lambda fn=fn: step(fn, x, backward))
                row: dict[str, Any] = {"case": case.name, "tasks": case.tasks, "batch": case.batch,
                                       "classes": case.classes, "mode": mode, "impl": impl, "floor_bytes": nbytes}
                try:
                    call()
                    stats = time_calls(call, ctx.device, reps=a.reps, warmup=a.warmup, sample_ms=a.sample_ms)
                    ms = stats["median_ms"]
                    times[impl] = ms
                    row.update(time=stats, ms=ms, gbs=nbytes / (ms * 1e-3) / 1e9,
                               x_floor=(ms * 1e-3) / (nbytes / (bandwidth * 1e9)) if bandwidth else None,
                               peak_mib=peak_extra_mib(call, ctx.device))
                except Exception as error:  # noqa: BLE001
                    row["error"] = one_line(error)
                out["rows"].append(row)
            if "fused" in times and "eager" in times:
                speedup = times["eager"] / times["fused"]
                for row in out["rows"][-2:]:
                    row["speedup_vs_eager"] = speedup if row["impl"] == "fused" else 1.0
                if backward and 4 <= case.tasks <= 8:
                    out["targets"].append({"what": f"{case.name} fused fwd+bwd speed-up vs eager", "value": speedup,
                                           "target": ">= 3", "met": speedup >= 3})
                if backward and case.classes >= 32768:
                    out["targets"].append({"what": f"{case.name} fused fwd+bwd speed-up vs eager (many classes)",
                                           "value": speedup, "target": ">= 1.5", "met": speedup >= 1.5})
                    x_floor = out["rows"][-2].get("x_floor")
                    if x_floor:
                        out["targets"].append({"what": f"{case.name} fused fwd+bwd x HBM floor", "value": x_floor,
                                               "target": "<= 1.3", "met": x_floor <= 1.3})
        ctx.log(f"multitask_loss {case.name} done")
        del x
        if ctx.cuda:
            torch.cuda.empty_cache()
    return out
