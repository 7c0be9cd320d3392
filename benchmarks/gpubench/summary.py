"""The readable summary printed at the end of a run (the JSON is written before it)."""

from __future__ import annotations

import re
from typing import Any

from .common import SECTIONS, one_line


# ============================================================================= printing


def _f(value: Any, spec: str) -> str:
    """``format(value, spec)``, or "-" right-aligned to the spec's width when ``value`` is None."""
    if value is None:
        width = re.match(r"\d*", spec).group(0)
        return format("-", ">" + width) if width else "-"
    return format(value, spec)


def print_summary(report: dict[str, Any]) -> None:
    """A readable summary of the report; a section whose result cannot be printed says so and is skipped."""
    sections = report["sections"]
    print("\n" + "=" * 100)
    for printer in (_print_header, _print_ceilings, _print_correctness, _print_attention, _print_loss, _print_train,
                    _print_pytest, _print_targets):
        try:
            printer(sections)
        except Exception as error:  # noqa: BLE001  (the JSON is written already; printing must not fail the run)
            print(f"(could not print {printer.__name__[7:]}: {one_line(error)})")
    if report.get("dry_run"):
        print("\nDRY RUN on CPU: tiny sizes, PyTorch fallback; no figure here says anything about a GPU.")
    summary = report.get("summary", {})
    print("CORRECTNESS FAILED" if summary.get("correctness_failed") else "correctness: all checks passed")


def _print_header(sections: dict[str, Any]) -> None:
    env = sections.get("environment", {}).get("result") or {}
    smi = env.get("nvidia_smi_start") or {}
    print(f"device {env.get('device')}  capability {env.get('capability')}  SMs {env.get('sm_count')}  "
          f"torch {env.get('torch')}  triton {env.get('triton')}  CUDA {env.get('torch_cuda')}  "
          f"driver {smi.get('driver_version', '-')}")
    if smi:
        print(f"clocks: SM {smi.get('clocks.sm', '-')} (max {smi.get('clocks.max.sm', '-')}), memory "
              f"{smi.get('clocks.mem', '-')}; power {smi.get('power.draw', '-')} / {smi.get('power.limit', '-')}")
    for name in SECTIONS:
        s = sections.get(name, {})
        extra = s.get("error") or s.get("reason") or ""
        print(f"  {name:16} {s.get('status', '-'):8} {_f(s.get('seconds'), '7.1f')} s  {extra}")


def _print_ceilings(sections: dict[str, Any]) -> None:
    ceilings = sections.get("ceilings", {}).get("result")
    if ceilings:
        print(f"\nceilings: copy {ceilings['copy_gbs']:.0f} GB/s (read+write), {ceilings['matmul_dtype']} matmul "
              f"{ceilings['matmul_size']}^3 {ceilings['matmul_tflops']:.1f} TFLOP/s")


def _print_correctness(sections: dict[str, Any]) -> None:
    corr = sections.get("correctness", {}).get("result")
    if not corr:
        return
    print(f"\ncorrectness ({corr['backend']}): {corr['checked']} cases, {corr['failed']} failed"
          + (f", {len(corr['not_run'])} not run (time budget)" if corr["not_run"] else ""))
    for group in ("attention", "multitask_loss"):
        for r in corr[group]:
            c = r["case"]
            what = (f"B{c['B']} H{c['H']} Lq{c['Lq']} Lk{c['Lk']} D{c['D']} {c['kind']}" if group == "attention"
                    else c["name"])
            print(f"  {group:15} {c['dtype']:5} {what:42} worst/tol {_f(r.get('worst_tol_ratio'), '7.3f')}  "
                  f"rerun identical {r.get('rerun_identical', '-')!s:5}  {'ok' if r['passed'] else 'FAILED'}"
                  + (f"  {r['error']}" if "error" in r else ""))


def _print_attention(sections: dict[str, Any]) -> None:
    att = sections.get("attention", {}).get("result")
    if not att:
        return
    print(f"\nattention ({att['dtype']}, fused = {att['fused_is']}); SDPA backend: "
          + ", ".join(f"{k}={v}" for k, v in att["sdpa_backend"].items()))
    print(f"{'shape':5} {'B':>3} {'mode':8} {'impl':8} {'ms':>9} {'spread%':>8} {'TFLOP/s':>8} {'GB/s':>8} "
          f"{'x floor':>8} {'peak MiB':>9} {'fused x':>8}")
    for r in att["rows"]:
        if "error" in r:
            print(f"{r['shape']:5} {r['B']:>3} {r['mode']:8} {r['impl']:8} error: {r['error']}")
            continue
        print(f"{r['shape']:5} {r['B']:>3} {r['mode']:8} {r['impl']:8} {r['ms']:9.3f} "
              f"{_f(r['time'].get('spread_pct'), '8.1f')} {r['tflops']:8.2f} {r['gbs']:8.1f} "
              f"{_f(r.get('x_floor'), '8.2f')} {_f(r.get('peak_mib'), '9.1f')} {_f(r.get('fused_speedup'), '8.2f')}")
    for m in att["masking"]:
        if "error" in m:
            print(f"masking {m['shape']}: error {m['error']}")
        else:
            print(f"masking {m['shape']}: all-valid/unmasked {m['all_valid_over_unmasked']:.2f} (<= 1.10), "
                  f"50%/all-valid {m['half_over_all_valid']:.2f} (<= 0.65)")
    for shape, k in att.get("fused_kernels_fwd_bwd", {}).items():
        if k and "launches" in k:
            print(f"fused fwd+bwd kernels {shape}: {k['launches']} launches "
                  f"({', '.join(t['name'][:40] for t in k['top'][:4])})")


def _print_loss(sections: dict[str, Any]) -> None:
    loss = sections.get("multitask_loss", {}).get("result")
    if not loss:
        return
    print(f"\nmultitask loss ({loss['dtype']}, fused = {loss['fused_is']})")
    print(f"{'case':<18}{'mode':<9}{'impl':<7}{'ms':>9}{'spread%':>9}{'GB/s':>9}{'x floor':>9}"
          f"{'eager/fused':>13}{'peak MiB':>10}")
    for r in loss["rows"]:
        if "error" in r:
            print(f"{r['case']:<18}{r['mode']:<9}{r['impl']:<7} error: {r['error']}")
            continue
        print(f"{r['case']:<18}{r['mode']:<9}{r['impl']:<7}{r['ms']:9.3f}{_f(r['time'].get('spread_pct'), '9.1f')}"
              f"{r['gbs']:9.1f}{_f(r.get('x_floor'), '9.2f')}{_f(r.get('speedup_vs_eager'), '13.2f')}"
              f"{_f(r.get('peak_mib'), '10.1f')}")


def _print_train(sections: dict[str, Any]) -> None:
    train = sections.get("train_step", {}).get("result")
    if not train:
        return
    print(f"\ntraining step: {train['config']} on {train['data']}, {train['parameters']} parameters, "
          f"bf16 autocast {train['autocast_bf16']}")
    for r in train["runs"]:
        label = f"B={r['batch']:<5} {r['backend_env']:6} {'compile' if r['compile'] else 'eager':8}"
        if "error" in r:
            print(f"  {label} error: {r['error']}")
            continue
        kernels = (r.get("kernels_per_step") or {}).get("launches")
        syncs = (r.get("host_syncs_per_step") or {}).get("count")
        print(f"  {label} {r['time']['median_ms']:8.3f} ms (spread {_f(r['time'].get('spread_pct'), '.1f')}%), "
              f"back-to-back {r['back_to_back_ms']:.3f} ms, first step {r['first_step_s']:.1f} s, "
              f"kernels/step {_f(kernels, 'd')}, host syncs {_f(syncs, 'd')}, "
              f"graph breaks {_f(r.get('graph_breaks'), 'd')}"
              + ("  (compiled during timing)" if r.get("compiled_during_timing") else ""))
    for sp in train.get("speedups", []):
        print(f"  B={sp['batch']}: {sp['variant']} is {sp['over_torch_eager']:.2f}x torch eager")


def _print_pytest(sections: dict[str, Any]) -> None:
    pt = sections.get("pytest", {}).get("result")
    if not pt:
        return
    j = pt.get("junit") or {}
    print(f"\npytest: return code {pt.get('returncode')}, passed {j.get('passed', '-')}, failures "
          f"{j.get('failures', '-')}, errors {j.get('errors', '-')}, skipped {j.get('skipped', '-')} "
          f"({pt['seconds']:.0f} s){'  TIMED OUT' if pt.get('timed_out') else ''}")
    for f in j.get("failed_tests", [])[:10]:
        print(f"  {f['kind']}: {f['test']}: {f['message'][:150]}")


def _print_targets(sections: dict[str, Any]) -> None:
    targets = [t for name in ("attention", "multitask_loss")
               for t in (sections.get(name, {}).get("result") or {}).get("targets", [])]
    if targets:
        met = sum(t["met"] for t in targets)
        print(f"\ntargets (kernel notes): {met} of {len(targets)} met")
        for t in targets:
            print(f"  {'ok  ' if t['met'] else 'MISS'} {t['what']}: {t['value']:.3g} (target {t['target']})")
