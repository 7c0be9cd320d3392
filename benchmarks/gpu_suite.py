#!/usr/bin/env python
"""Ready for the first GPU: correctness, the kernel tables and a training step, in one command and one JSON.

    python benchmarks/gpu_suite.py                        # on a CUDA machine: everything
    python benchmarks/gpu_suite.py --results-dir "$OUT"   # write the JSON somewhere else
    python benchmarks/gpu_suite.py --dry-run              # CPU: tiny version of every section (tests)

Sections, in the order they run (each fails softly: its exception is recorded in the
JSON and the suite goes on):

1. ``environment``: device name, capability, SM count, memory, L2, torch / Triton / CUDA /
   cuDNN / driver versions, clocks and power read with ``nvidia-smi`` (read-only queries),
   TF32 flags, and whether mtmm was imported from an install or through this script's shim.
2. ``ceilings``: the device's measured copy bandwidth and bf16 matmul rate.
3. ``correctness``: both fused kernels (``backend="triton"``) against their float64
   references (``mtmm_kernels.attention_reference``, ``multitask_loss_reference``), values
   and gradients, float32 / float16 / bfloat16, odd sizes, prefix lengths and bool masks,
   fully masked samples, unlabelled samples holding garbage targets, ``log_vars``; the
   attention also at the benchmark shapes T, S, M, L; every output is run twice to look for races.
4. ``attention``: fused vs eager vs SDPA (and ``torch.compile`` of eager with
   ``--attn-compile``), forward and forward+backward, at the kernel notes' shapes; the
   SDPA backend that ran; masking costs; CUDA kernels per fused forward+backward.
5. ``multitask_loss``: fused vs eager, forward and forward+backward, 2/4/8 tasks, batch
   256..8192, 10..32768 classes.
6. ``train_step``: one optimiser step of the default model (configs/default.yaml on
   avdigits, a fixed batch already on the device) with ``MTMM_KERNEL_BACKEND=torch`` and
   ``auto``, each eager and under ``torch.compile`` (an error is recorded, not raised).
7. ``pytest``: the kernel test files run on the GPU (their DEVICE is CUDA there), as a
   subprocess within what is left of ``--time-budget``.

Times are CUDA-event times after warm-up: ``reps`` samples, each the mean of ``inner``
back-to-back calls (inner chosen so that a sample lasts about ``--sample-ms``); median,
min, max, p10, p90, IQR. Exit status: 0, or 1 when a correctness check (section 3 or 7)
failed or could not run, or 2 when there is no CUDA device and ``--dry-run`` was not given.

Written for Python >= 3.10 and torch >= 2.2 (run on torch 2.11 + Triton 3.6 and newer).

The sections live in the ``gpubench`` package next to this file (one module per concern, see
its ``__init__``); this file parses the arguments, runs them in order and writes the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# Run as a file, this folder is sys.path[0] already; loaded by its path (the tests) it is not.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpubench.importable import BENCH, ROOT, ensure_importable  # noqa: E402

IMPORT_INFO = ensure_importable()  # before anything imports mtmm: a bare GPU machine has nothing installed

import torch  # noqa: E402

from gpubench.common import (DTYPES_BY_NAME, SECTIONS, Budget, Context, clean_json, now_iso,  # noqa: E402
                             one_line, safe_name)
from gpubench.correctness import section_correctness  # noqa: E402
from gpubench.environment import nvidia_smi, section_ceilings, section_environment  # noqa: E402
from gpubench.pytest_section import section_pytest  # noqa: E402
from gpubench.speed_tables import section_attention, section_multitask_loss  # noqa: E402
from gpubench.summary import print_summary  # noqa: E402
from gpubench.train_step import section_train_step  # noqa: E402

RESULTS = BENCH / "results"
SCHEMA = 1
PYTEST_FILES = ("tests/test_attention_triton.py", "tests/test_multitask_loss_triton.py",
                "tests/test_attention.py", "tests/test_multitask_loss.py")
DRY_RUN_TESTS = ("tests/test_attention.py::test_empty_sample_gives_zero_output_and_gradients",
                 "tests/test_multitask_loss.py::test_all_targets_ignored_gives_zero")


# ============================================================================= the sections, in the order they run


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "environment": section_environment,
    "ceilings": section_ceilings,
    "correctness": section_correctness,
    "attention": section_attention,
    "multitask_loss": section_multitask_loss,
    "train_step": section_train_step,
    "pytest": section_pytest,
}
CORRECTNESS_SECTIONS = ("correctness", "pytest")


def section_status(name: str, result: dict[str, Any]) -> str:
    if name == "correctness":
        return "ok" if result.get("all_passed") else "failed"
    if name == "pytest":
        return "ok" if result.get("passed") else "failed"
    return "ok"


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="tiny CPU version of every section (for tests); runs without CUDA")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (environment always runs)")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="folder for the JSON (default benchmarks/results/; a temporary folder with --dry-run)")
    p.add_argument("--out", type=Path, default=None, help="exact JSON path (overrides --results-dir)")
    p.add_argument("--resume", type=Path, default=None,
                   help="a JSON of an earlier run: keep its sections that finished, run the others, write it back")
    p.add_argument("--time-budget", type=float, default=540.0,
                   help="seconds; once spent, sections and their items are skipped and listed in not_run (default 540)")
    p.add_argument("--reps", type=int, default=None, help="timed samples per measurement (default 30; 3 dry run)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls before timing (default 5; 1 dry run)")
    p.add_argument("--sample-ms", type=float, default=None,
                   help="target length of one timing sample, in ms (back-to-back calls; default 2)")
    p.add_argument("--shapes", default=None, help="attention shapes among T,S,M,L (default all; T in a dry run)")
    p.add_argument("--batch", type=int, default=None, help="override the attention batch B (default: the notes'; "
                                                           "1 in a dry run)")
    p.add_argument("--attn-dtype", choices=sorted(DTYPES_BY_NAME), default=None,
                   help="attention table dtype (default bf16; fp32 in a dry run)")
    p.add_argument("--attn-compile", action="store_true", help="add torch.compile(eager) to the attention table")
    p.add_argument("--loss-dtype", choices=sorted(DTYPES_BY_NAME), default=None,
                   help="loss table dtype (default bf16; fp32 in a dry run)")
    p.add_argument("--loss-tasks", type=ints, default=[2, 4, 8])
    p.add_argument("--loss-batches", type=ints, default=[256, 2048, 8192])
    p.add_argument("--loss-classes", type=ints, default=[10, 1000, 32768])
    p.add_argument("--correctness-budget", type=float, default=240.0,
                   help="seconds the correctness section may start new cases for (default 240; "
                        "each new shape/dtype/mask combination autotunes the kernel)")
    p.add_argument("--full-correctness", action="store_true",
                   help="every shape x dtype x masking combination (slow: each new combination autotunes)")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"),
                   help="model config for the training step (a path or a shipped config's name)")
    p.add_argument("--train-batches", type=ints, default=None, help="batch sizes of the training step "
                                                                    "(default 64,512; 8 in a dry run)")
    p.add_argument("--train-reps", type=int, default=None, help="timed training steps (default 50; 2 dry run)")
    p.add_argument("--compile", dest="compile_mode", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile variants of the training step (auto: on with CUDA, off in a dry run)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the training step's compiled variants (default inductor)")
    p.add_argument("--no-explain", dest="explain", action="store_false",
                   help="skip torch._dynamo.explain (graph breaks) of the compiled forward")
    p.add_argument("--pytest-files", default=None,
                   help="comma-separated test files or node ids for the pytest section (default: "
                        f"{','.join(PYTEST_FILES)}; two quick fallback tests in a dry run)")
    p.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[],
                   help="everything after this goes to pytest (e.g. --pytest-args -x -k bf16)")
    args = p.parse_args(argv)
    dry = args.dry_run
    args.reps = args.reps or (3 if dry else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 5)
    args.sample_ms = args.sample_ms or (0.5 if dry else 2.0)
    args.shapes = args.shapes or ("T" if dry else "T,S,M,L")
    args.batch = args.batch or (1 if dry else None)
    args.attn_dtype = args.attn_dtype or ("fp32" if dry else "bf16")
    args.loss_dtype = args.loss_dtype or ("fp32" if dry else "bf16")
    args.train_batches = args.train_batches or ([8] if dry else [64, 512])
    args.train_reps = args.train_reps or (2 if dry else 50)
    args.pytest_files = args.pytest_files or (",".join(DRY_RUN_TESTS) if dry else ",".join(PYTEST_FILES))
    if args.compile_mode == "auto":
        args.compile_mode = "off" if dry else "on"
    unknown = [s for s in args.sections.split(",") if s and s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose among {', '.join(SECTIONS)}")
    from attention_common import SHAPES

    bad_shapes = [s for s in args.shapes.split(",") if s.strip() not in SHAPES]
    if bad_shapes:
        p.error(f"unknown shape(s) {bad_shapes}; choose among {', '.join(SHAPES)}")
    return args


def output_path(args: argparse.Namespace, report: dict[str, Any], stamp: str) -> Path:
    if args.out is not None:
        return args.out
    if args.resume is not None:
        return args.resume
    if args.results_dir is not None:
        folder = args.results_dir
    elif args.dry_run:
        folder = Path(tempfile.gettempdir())
    else:
        folder = RESULTS
    device = report["sections"]["environment"].get("result", {}).get("device") or "unknown"
    prefix = "gpu_suite-dryrun" if args.dry_run else "gpu_suite"
    return folder / f"{prefix}-{safe_name(device)}-{stamp}.json"


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean_json(report), indent=1))
    os.replace(tmp, path)


def finish_report(report: dict[str, Any]) -> None:
    sections = report["sections"]
    failed = [name for name in CORRECTNESS_SECTIONS
              if name in sections and sections[name]["status"] in ("failed", "error")]
    corr = (sections.get("correctness", {}).get("result") or {})
    report["summary"] = {
        "correctness_failed": bool(failed),
        "correctness_cases": {"checked": corr.get("checked"), "failed": corr.get("failed"),
                              "not_run": len(corr.get("not_run") or [])},
        "failed_correctness_sections": failed,
        "section_errors": {name: s.get("error") for name, s in sections.items() if s["status"] == "error"},
        "skipped_sections": [name for name, s in sections.items() if s["status"] == "skipped"],
        "targets_missed": [t["what"] for name in ("attention", "multitask_loss")
                           for t in (sections.get(name, {}).get("result") or {}).get("targets", []) if not t["met"]],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu_suite: no CUDA device is visible (torch.cuda.is_available() is False).\n"
              "This suite times and checks the Triton kernels on a GPU. On this machine run\n"
              "    python benchmarks/gpu_suite.py --dry-run\n"
              "for a tiny CPU version of every section (it checks the script, not the kernels).", file=sys.stderr)
        return 2
    device = "cuda" if cuda and not args.dry_run else "cpu"
    if args.dry_run:
        torch.set_num_threads(1)  # tiny sizes: threads only contend on a shared CPU machine
    budget = Budget(args.time_budget)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.resume is not None:
        report = json.loads(args.resume.read_text())
        report.setdefault("resumed", []).append({"at": now_iso(), "argv": sys.argv[1:] if argv is None else argv})
    else:
        report = {"suite": "mtmm benchmarks/gpu_suite.py", "schema": SCHEMA, "started": now_iso(),
                  "argv": sys.argv[1:] if argv is None else list(argv), "dry_run": args.dry_run, "device_kind": device,
                  "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "sections": {}}
    ctx = Context(args, device, budget, report)
    wanted = {s for s in args.sections.split(",") if s} | {"environment"}
    path: Path | None = None
    # The run order puts the pytest subprocess last: it gets what is left of the time budget.
    for name in SECTIONS:
        previous = report["sections"].get(name)
        if name not in wanted:
            report["sections"].setdefault(name, {"status": "skipped", "reason": "not in --sections"})
            continue
        if args.resume is not None and previous and previous.get("status") in ("ok", "failed") \
                and name != "environment":
            ctx.log(f"{name}: kept from {args.resume}")
            continue
        if budget.spent() and name != "environment":
            report["sections"][name] = {"status": "skipped", "reason": f"time budget of {args.time_budget:g} s spent"}
            continue
        ctx.log(f"{name} ...")
        began = time.perf_counter()
        entry: dict[str, Any] = {"started": now_iso()}
        try:
            result = RUNNERS[name](ctx)
            entry.update(status=section_status(name, result), result=result)
        except Exception as error:  # noqa: BLE001  (fail softly: record it and go on)
            entry.update(status="error", error=one_line(error), traceback=traceback.format_exc()[-4000:])
        entry["seconds"] = time.perf_counter() - began
        if name == "environment" and args.resume is not None and previous:
            entry["earlier"] = previous.get("result")
        report["sections"][name] = entry
        ctx.log(f"{name}: {entry['status']} ({entry['seconds']:.1f} s)")
        if path is None:
            path = output_path(args, report, stamp)
        finish_report(report)
        write_report(path, report)  # after every section: a run stopped later still leaves these figures
    if cuda and device == "cuda":
        report["sections"]["environment"].setdefault("result", {})["nvidia_smi_end"] = nvidia_smi()
    report["finished"] = now_iso()
    report["wall_s"] = budget.elapsed()
    finish_report(report)
    assert path is not None
    write_report(path, report)
    print_summary(report)
    print(f"\nwrote {path}")
    return 1 if report["summary"]["correctness_failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
