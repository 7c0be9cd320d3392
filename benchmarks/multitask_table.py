"""Fused multitask loss benchmark: prints a table and writes JSON to ``benchmarks/results/``.

    python benchmarks/multitask_table.py                                     # GPU defaults
    python benchmarks/multitask_table.py --tasks 2,4 --batches 256 --classes 10,1000 --reps 5   # small CPU run

Fused (the Triton kernel on CUDA; on a CPU-only machine the PyTorch fallback, and the
output says the Triton kernel was not timed) against eager (``task_loss`` per task,
then the sum), forward and forward+backward. Columns: median time, GB/s against the
bytes floor (predictions, targets and masks read once; gradients written once), the
eager / fused speed-up, and extra peak memory (CUDA only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import torch
from multitask_common import Case, floor_bytes, implementations, make_inputs, peak_memory_mb, step, time_ms

RESULTS = Path(__file__).resolve().parent / "results"
CPU_MAX_LOGITS = 2**24


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=ints, default=[2, 4, 8])
    parser.add_argument("--batches", type=ints, default=[256, 2048, 8192])
    parser.add_argument("--classes", type=ints, default=[10, 1000, 32768])
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device == "cuda" else "fp32")]
    reps = args.reps or (50 if device == "cuda" else 5)
    if device == "cpu":
        torch.set_num_threads(1)  # steadier timings on a shared machine
    fused_is = "triton" if device == "cuda" else "torch fallback (Triton kernel not timed: no CUDA)"
    print(f"device {device}  dtype {dtype}  fused = {fused_is}")
    rows = []
    header = f"{'case':<18}{'mode':<9}{'impl':<7}{'ms':>9}{'GB/s':>9}{'eager/fused':>13}{'peak MB':>9}"
    print(header)
    for case in (Case(t, b, c) for t in args.tasks for b in args.batches for c in args.classes):
        if device == "cpu" and case.batch * case.classes > CPU_MAX_LOGITS:
            continue
        x = make_inputs(case, dtype, device)
        for mode in ("fwd", "fwd+bwd"):
            backward, timings = mode == "fwd+bwd", {}
            for impl, fn in implementations().items():
                timings[impl] = time_ms(lambda: step(fn, x, backward), reps, device)
                floor = floor_bytes(x, backward)
                row = dict(case=case.name, tasks=case.tasks, batch=case.batch, classes=case.classes, mode=mode,
                           impl=impl, ms=timings[impl], floor_bytes=floor, gbs=floor / timings[impl] / 1e6,
                           peak_mb=peak_memory_mb(lambda: step(fn, x, backward), device))
                rows.append(row)
            for row in rows[-2:]:
                row["speedup_vs_eager"] = timings["eager"] / timings["fused"] if row["impl"] == "fused" else 1.0
                peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.1f}"
                print(f"{row['case']:<18}{mode:<9}{row['impl']:<7}{row['ms']:>9.3f}{row['gbs']:>9.2f}"
                      f"{row['speedup_vs_eager']:>13.2f}{peak:>9}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"multitask_loss_{device}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                torch=torch.__version__, dtype=str(dtype), reps=reps, fused_is=fused_is,
                triton_timed=device == "cuda", python=sys.version.split()[0])
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
