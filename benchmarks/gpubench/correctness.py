"""Section 3: both fused kernels against their float64 references, values and gradients, every output twice."""

from __future__ import annotations

import json
import time
import traceback
from typing import Any

import torch

from .common import DTYPES_BY_NAME, Context, one_line


# ============================================================================= section 3: correctness


def ratio_to_tolerance(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> float:
    """max |got - want| / (atol + rtol |want|) (at most 1 passes); inf when ``got`` is not finite."""
    got, want = got.detach().double(), want.detach().double()
    if not bool(torch.isfinite(got).all()):
        return float("inf")
    if got.numel() == 0:
        return 0.0
    return float(((got - want).abs() / (atol + rtol * want.abs())).max())


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    denominator = float(want.norm())
    return float((got - want).norm()) / denominator if denominator > 0 else float((got - want).norm())


def attention_cases(ctx: Context) -> list[dict[str, Any]]:
    """The benchmark shapes at full size in bf16 (the tables' lengths, sample 0 fully masked), then odd
    sizes x dtypes x masking kinds (a cover by default, every combination with --full-correctness),
    float32 last (its autotuning compiles the slowest)."""
    f32, f16, bf16 = "fp32", "fp16", "bf16"
    if ctx.args.dry_run:
        return [dict(B=2, H=2, Lq=5, Lk=9, D=16, dtype=f32, kind="lengths"),
                dict(B=3, H=1, Lq=7, Lk=33, D=24, dtype=bf16, kind="mask")]
    from attention_common import SHAPES

    cases = []
    for name in ctx.args.shapes.split(","):
        s = SHAPES[name.strip()]
        cases.append(dict(B=s.B, H=s.H, Lq=s.Lq, Lk=s.Lk, D=s.d, dtype=bf16, kind="bench", shape=s.name))
    shapes = [(2, 1, 1, 1, 16), (3, 2, 33, 65, 24), (2, 3, 77, 257, 64), (2, 2, 128, 577, 128), (1, 2, 17, 9, 100),
              (4, 1, 300, 1000, 64)]
    if ctx.args.full_correctness:
        cover = [(i, dt, kind) for dt in (f16, bf16, f32) for i in range(len(shapes))
                 for kind in ("lengths", "mask", "none")]
    else:
        cover = [(0, f16, "mask"), (2, f16, "lengths"), (4, f16, "none"), (1, bf16, "mask"), (3, bf16, "lengths"),
                 (5, bf16, "none"), (1, f32, "lengths"), (2, f32, "mask")]
    for index, dt, kind in cover:
        B, H, Lq, Lk, D = shapes[index]
        cases.append(dict(B=B, H=H, Lq=Lq, Lk=Lk, D=D, dtype=dt, kind=kind))
    return cases


def check_attention_case(case: dict[str, Any], device: str, backend: str) -> dict[str, Any]:
    from mtmm_kernels import cross_modal_attention
    from mtmm_kernels._testing import TOLERANCES, make_lengths, make_mask, make_qkv, reference_and_grads

    B, H, Lq, Lk, D = case["B"], case["H"], case["Lq"], case["Lk"], case["D"]
    dtype = DTYPES_BY_NAME[case["dtype"]]
    q, k, v = make_qkv(B, H, Lq, Lk, D, dtype, device)
    kwargs: dict[str, Any] = {}
    valid: torch.Tensor | None = None  # bool [B]: the sample has a valid key
    if case["kind"] == "lengths":
        kwargs["key_lengths"] = make_lengths(B, Lk, device)
        valid = kwargs["key_lengths"] > 0
    elif case["kind"] == "bench":  # the tables' lengths (50..100% of Lk), sample 0 fully masked
        lengths = torch.randint((Lk + 1) // 2, Lk + 1, (B,), device=device)
        lengths[0] = 0
        kwargs["key_lengths"] = lengths
        valid = lengths > 0
    elif case["kind"] == "mask":
        kwargs["key_padding_mask"] = make_mask(B, Lk, device)
        valid = kwargs["key_padding_mask"].any(dim=1)
    out = cross_modal_attention(q, k, v, backend=backend, **kwargs)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    again = cross_modal_attention(q, k, v, backend=backend, **kwargs)
    grads_again = torch.autograd.grad(again, (q, k, v), dout)
    ref, ref_grads = reference_and_grads(q, k, v, dout, **kwargs)
    atol, rtol = TOLERANCES[dtype]
    result: dict[str, Any] = {"dtype_ok": out.dtype == dtype and all(g.dtype == dtype for g in grads),
                              "shape_ok": tuple(out.shape) == (B, H, Lq, D)}
    worst = 0.0
    for name, got, want in (("out", out, ref), ("dq", grads[0], ref_grads[0]), ("dk", grads[1], ref_grads[1]),
                            ("dv", grads[2], ref_grads[2])):
        scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
        ratio = ratio_to_tolerance(got, want, atol * scale, rtol)
        result[name] = {"tol_ratio": ratio, "rel_l2": rel_l2(got, want),
                        "max_abs": float((got.detach().double() - want).abs().max()) if got.numel() else 0.0}
        worst = max(worst, ratio)
    if valid is not None and not bool(valid.all()):
        empty = ~valid
        zero_out = bool((out[empty] == 0).all())
        zero_grads = all(bool((g[empty] == 0).all()) for g in grads)
        result["masked_samples"] = int(empty.sum())
        result["masked_samples_zero"] = zero_out and zero_grads
    rerun = max(float((out - again).detach().abs().max()),
                *(float((g - h).abs().max()) for g, h in zip(grads, grads_again)))
    result["rerun_max_abs_diff"] = rerun
    result["rerun_identical"] = rerun == 0.0
    result["worst_tol_ratio"] = worst
    result["passed"] = bool(result["dtype_ok"] and result["shape_ok"] and worst <= 1.0
                            and result.get("masked_samples_zero", True))
    return result


def loss_cases(ctx: Context) -> list[dict[str, Any]]:
    """Task lists for the loss check: (kind, batch, width, labelled, ignore_fraction) per task, one dtype each."""
    mixed = [("cross_entropy", 37, 10, 0.7, 0.1), ("bce", 37, None, 0.8, 0.0), ("mse", 37, 3, None, 0.0),
             ("l1", 37, None, 0.5, 0.0), ("huber", 37, 2, 0.9, 0.0)]
    if ctx.args.dry_run:
        return [dict(name="mixed", dtype="fp32", tasks=mixed, log_vars=True)]
    wide = [("cross_entropy", 1000, 1000, 0.8, 0.05), ("bce", 1000, 4, 0.0, 0.0), ("mse", 999, None, None, 0.0)]
    many_classes = [("cross_entropy", 257, 32773, 0.9, 0.0), ("bce", 257, None, None, 0.0)]
    single = [("cross_entropy", 1, 3, None, 0.0), ("mse", 1, None, None, 0.0), ("huber", 5, None, 0.2, 0.0)]
    cases = []
    for dt in ("fp32", "fp16", "bf16"):
        cases.append(dict(name="mixed", dtype=dt, tasks=mixed, log_vars=True))
        cases.append(dict(name="wide+unlabelled", dtype=dt, tasks=wide, log_vars=False))
    cases.append(dict(name="32773 classes", dtype="bf16", tasks=many_classes, log_vars=True))
    cases.append(dict(name="32773 classes", dtype="fp32", tasks=many_classes, log_vars=False))
    cases.append(dict(name="batch 1", dtype="fp32", tasks=single, log_vars=True))
    return cases


def check_loss_case(case: dict[str, Any], device: str, backend: str) -> dict[str, Any]:
    from mtmm_kernels import multitask_loss
    from mtmm_kernels.multitask_loss_reference import multitask_loss_reference
    from mtmm_kernels.multitask_loss_testing import GRAD_TOLERANCES, LOSS_TOLERANCE, loss_and_grads, make_task

    dtype = DTYPES_BY_NAME[case["dtype"]]
    tasks = [make_task(kind, batch, width, dtype, labelled=labelled, device=device, ignore_fraction=ignore)
             for kind, batch, width, labelled, ignore in case["tasks"]]
    T = len(tasks)
    log_vars = torch.randn(T, device=device).requires_grad_() if case["log_vars"] else None
    mix = torch.rand(T, device=device)

    def fused_multitask(preds, targets, kinds, **kwargs):
        return multitask_loss(preds, targets, kinds, backend=backend, **kwargs)

    got = loss_and_grads(fused_multitask, tasks, log_vars, mix)
    again = loss_and_grads(fused_multitask, tasks, log_vars, mix)
    want = loss_and_grads(multitask_loss_reference, tasks, log_vars, mix)
    result: dict[str, Any] = {"tasks": [f"{t.kind}[{list(t.pred.shape)}]" for t in tasks]}
    worst = 0.0
    atol, rtol = LOSS_TOLERANCE
    for name, g, w in (("total", got[0], want[0]), ("per_task", got[1], want[1]), ("d_log_vars", got[3], want[3])):
        if w is None:
            continue
        scale = max(1.0, float(w.abs().max()))
        ratio = ratio_to_tolerance(g, w, atol * scale, rtol)
        result[name] = {"tol_ratio": ratio, "rel_l2": rel_l2(g, w)}
        worst = max(worst, ratio)
    grad_atol, grad_rtol = GRAD_TOLERANCES[dtype]
    dtype_ok = True
    for i, (task, g, w) in enumerate(zip(tasks, got[2], want[2])):
        dtype_ok = dtype_ok and g.dtype == task.pred.dtype
        scale = max(float(w.abs().max()), 1e-30)
        ratio = ratio_to_tolerance(g, w, grad_atol * scale, grad_rtol)
        result[f"grad_{i}_{task.kind}"] = {"tol_ratio": ratio, "rel_l2": rel_l2(g, w)}
        worst = max(worst, ratio)
    rerun = max([float((a - b).abs().max()) for a, b in zip(got[2], again[2])]
                + [float((got[0] - again[0]).abs()), float((got[1] - again[1]).abs().max())])
    result.update(dtype_ok=dtype_ok, rerun_max_abs_diff=rerun, rerun_identical=rerun == 0.0, worst_tol_ratio=worst,
                  passed=bool(dtype_ok and worst <= 1.0))
    return result


def section_correctness(ctx: Context) -> dict[str, Any]:
    backend = "triton" if ctx.cuda else "torch"
    budget = ctx.budget.capped(ctx.args.correctness_budget)
    out: dict[str, Any] = {"backend": backend, "attention": [], "multitask_loss": [], "not_run": [],
                           "budget_s": ctx.args.correctness_budget}
    if not ctx.cuda:
        out["note"] = "no CUDA: the PyTorch fallback was checked, the Triton kernels were not run"
    groups = (("attention", attention_cases(ctx), check_attention_case),
              ("multitask_loss", loss_cases(ctx), check_loss_case))
    for group, cases, check in groups:
        for index, case in enumerate(cases):
            label = f"{group} {index}: {json.dumps({k: v for k, v in case.items() if k != 'tasks'})}"
            if budget.spent():
                out["not_run"].append(label)
                continue
            torch.manual_seed(1000 + index)
            began = time.perf_counter()
            try:
                result = check(case, ctx.device, backend)
            except Exception as error:  # noqa: BLE001  (a crash is a failed case, the others still run)
                result = {"passed": False, "error": one_line(error), "traceback": traceback.format_exc()[-2000:]}
            result["case"] = case
            result["seconds"] = time.perf_counter() - began
            out[group].append(result)
            ctx.log(f"correctness {label}: {'ok' if result['passed'] else 'FAILED'} "
                    f"(worst/tol {result.get('worst_tol_ratio', float('nan')):.3g}, {result['seconds']:.1f} s)")
            if ctx.cuda:
                torch.cuda.empty_cache()
    results = out["attention"] + out["multitask_loss"]
    out["checked"] = len(results)
    out["failed"] = sum(not r["passed"] for r in results)
    out["all_passed"] = out["failed"] == 0 and not out["not_run"]
    return out
