"""Cross-modal attention benchmark: prints a table and writes JSON to ``benchmarks/results/``.

    python benchmarks/attention_table.py                      # all shapes, GPU defaults
    python benchmarks/attention_table.py --shapes T,S --batch 2 --reps 5   # small CPU run

For each shape (T, S, M, L of the kernel notes), forward and forward+backward:
"fused" (the Triton kernel on CUDA; on a CPU-only machine the PyTorch fallback, and
the table says the Triton kernel was not timed), "eager" (matmul, mask, softmax,
matmul), "sdpa" (``scaled_dot_product_attention`` with the same bool mask; the
backend it ran is recorded) and "compile" (``torch.compile`` of eager).

Columns: median time, nominal TFLOP/s (padded Lk), GB/s against the bytes floor,
time / floor time (floor bytes at the measured copy bandwidth), extra peak memory
(CUDA only), and the speed-up of "fused" over each row. A second table checks the
masking targets: the fused call unmasked, with all keys valid, and at 50% valid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import torch
from attention_common import (
    SHAPES,
    Inputs,
    copy_bandwidth_gbs,
    floor_bytes,
    flops,
    forward_backward,
    forward_only,
    implementations,
    make_inputs,
    peak_memory_mb,
    sdpa_backend,
    time_ms,
)

from mtmm_kernels import cross_modal_attention

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="T,S,M,L", help="comma-separated names among T, S, M, L")
    p.add_argument("--dtype", choices=DTYPES, default="bf16" if cuda else "fp32")
    p.add_argument("--batch", type=int, default=None, help="override B (default: the notes' B on CUDA, 1 on CPU)")
    p.add_argument("--reps", type=int, default=50 if cuda else 10)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: benchmarks/results/attention_<device>_<time>.json)")
    return p.parse_args(argv)


def measure(name: str, fn, x: Inputs, backward: bool, device: str, reps: int) -> dict:
    """Time one implementation in one mode; an exception becomes an ``error`` entry."""
    step = (lambda: forward_backward(fn, x)) if backward else (lambda: forward_only(fn, x))
    try:
        ms = time_ms(step, device, reps)
        peak = peak_memory_mb(step, device)
    except Exception as exc:  # noqa: BLE001  (a failing baseline must not stop the table)
        return {"impl": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    return {"impl": name, "ms": ms, "peak_mib": peak}


def run(args: argparse.Namespace) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype]
    triton_timed = device == "cuda"
    bandwidth = copy_bandwidth_gbs(device)
    impls = implementations(device, with_compile=not args.no_compile)
    rows, masking, backends = [], [], {}
    for key in args.shapes.split(","):
        shape = SHAPES[key.strip()]
        shape = shape.with_batch(args.batch or (shape.B if device == "cuda" else 1))
        x = make_inputs(shape, dtype, device)
        backends[shape.name] = sdpa_backend(x)
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            nbytes = floor_bytes(shape, x.q.element_size(), backward)
            for fn in impls.values():  # warm every implementation (compile, autotune, thread pools) first
                measure("warm-up", fn, x, backward, device, reps=1)
            results = [measure(name, fn, x, backward, device, args.reps) for name, fn in impls.items()]
            fused_ms = results[0].get("ms")
            for r in results:
                r.update(shape=shape.name, B=shape.B, H=shape.H, Lq=shape.Lq, Lk=shape.Lk, d=shape.d, mode=mode)
                if "ms" in r:
                    seconds = r["ms"] * 1e-3
                    r["tflops"] = flops(shape, backward) / seconds / 1e12
                    r["gbs"] = nbytes / seconds / 1e9
                    r["x_floor"] = seconds / (nbytes / (bandwidth * 1e9))
                    r["fused_speedup"] = r["ms"] / fused_ms if fused_ms else None
                rows.append(r)
            print(f"  {shape.name} {mode} done", file=sys.stderr)
        masking.append(masking_row(shape, dtype, device, args.reps))
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or 'unknown'})",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "triton_timed": triton_timed,
        "fused_is": "triton kernel" if triton_timed else "PyTorch fallback (SDPA + additive float mask)",
        "copy_bandwidth_gbs": bandwidth,
        "sdpa_backend": backends,
        "rows": rows,
        "masking": masking,
    }


def masking_row(shape, dtype: torch.dtype, device: str, reps: int) -> dict:
    """Fused fwd+bwd unmasked, with lengths = Lk (all valid), and with lengths = Lk // 2 (50% valid)."""
    x = make_inputs(shape, dtype, device)
    backend = "triton" if device == "cuda" else "torch"
    full = torch.full_like(x.key_lengths, shape.Lk)
    half = torch.full_like(x.key_lengths, max(1, shape.Lk // 2))

    def fused(lengths):
        return lambda x_: cross_modal_attention(x_.q, x_.k, x_.v, key_lengths=lengths, backend=backend)

    t = {name: time_ms(lambda f=f: forward_backward(f, x), device, reps)
         for name, f in (("unmasked", fused(None)), ("all_valid", fused(full)), ("half_valid", fused(half)))}
    return {"shape": shape.name, **{f"{k}_ms": v for k, v in t.items()},
            "all_valid_over_unmasked": t["all_valid"] / t["unmasked"],
            "half_over_all_valid": t["half_valid"] / t["all_valid"]}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(report: dict) -> None:
    print(f"device: {report['device']}  torch {report['torch']}  dtype {report['dtype']}  "
          f"copy bandwidth {report['copy_bandwidth_gbs']:.0f} GB/s")
    if not report["triton_timed"]:
        print("NOTE: no CUDA device: the Triton kernel was NOT timed; 'fused' is the PyTorch fallback "
              "(SDPA + additive float mask).")
    print("SDPA backend per shape: " + ", ".join(f"{k}={v}" for k, v in report["sdpa_backend"].items()))
    header = f"{'shape':5} {'B':>3} {'mode':8} {'impl':8} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} {'x floor':>8} " \
             f"{'peak MiB':>9} {'fused x':>8}"
    print(header)
    print("-" * len(header))
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['shape']:5} {r['B']:>3} {r['mode']:8} {r['impl']:8} error: {r['error']}")
            continue
        print(f"{r['shape']:5} {r['B']:>3} {r['mode']:8} {r['impl']:8} {r['ms']:9.3f} {r['tflops']:8.3f} "
              f"{r['gbs']:8.1f} {r['x_floor']:8.1f} {_fmt(r['peak_mib'], '9.1f'):>9} "
              f"{_fmt(r['fused_speedup'], '8.2f'):>8}")
    print("\nmasking (fused fwd+bwd): all-valid / unmasked (target <= 1.10), 50% valid / all-valid (target <= 0.65)")
    for m in report["masking"]:
        print(f"{m['shape']:5} unmasked {m['unmasked_ms']:.3f} ms  all-valid {m['all_valid_ms']:.3f} ms  "
              f"50% {m['half_valid_ms']:.3f} ms  ratios {m['all_valid_over_unmasked']:.2f}, "
              f"{m['half_over_all_valid']:.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    print_tables(report)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"attention_{'cuda' if report['triton_timed'] else 'cpu'}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
