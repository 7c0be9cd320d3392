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
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
SCHEMA = 1
SECTIONS = ("environment", "ceilings", "correctness", "attention", "multitask_loss", "train_step", "pytest")
ENV_BACKEND = "MTMM_KERNEL_BACKEND"
PYTEST_FILES = ("tests/test_attention_triton.py", "tests/test_multitask_loss_triton.py",
                "tests/test_attention.py", "tests/test_multitask_loss.py")
DRY_RUN_TESTS = ("tests/test_attention.py::test_empty_sample_gives_zero_output_and_gradients",
                 "tests/test_multitask_loss.py::test_all_targets_ignored_gives_zero")


# ============================================================================= making mtmm importable


def _entry_points_from_pyproject() -> str:
    """The ``[project.entry-points.mtmm]`` table of pyproject.toml as an entry_points.txt section."""
    lines, inside = ["[mtmm]"], False
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped == "[project.entry-points.mtmm]"
            continue
        match = re.match(r'^([A-Za-z0-9_.-]+)\s*=\s*"([^"]+)"', stripped) if inside else None
        if match:
            lines.append(f"{match.group(1)} = {match.group(2)}")
    return "\n".join(lines) + "\n"


def ensure_importable() -> dict[str, Any]:
    """Make ``mtmm_kernels``, ``mtmm_core`` and the built-in plugins importable from this checkout.

    On a machine where mtmm is not installed (a bare GPU machine), a temporary folder gets a
    link ``mtmm_kernels -> kernels/`` and a ``mtmm-<version>.dist-info`` holding pyproject's
    entry points (the registry finds the built-in components through them); it goes first on
    ``sys.path`` and on the pytest subprocess's ``PYTHONPATH``. Nothing is installed.
    """
    info: dict[str, Any] = {"root": str(ROOT)}
    for path in (str(BENCH), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
    shim: Path | None = None

    def shim_dir() -> Path:
        nonlocal shim
        if shim is None:
            shim = Path(tempfile.mkdtemp(prefix="mtmm_gpu_suite_"))
            atexit.register(shutil.rmtree, str(shim), True)
        return shim

    if importlib.util.find_spec("mtmm_kernels") is None:
        target = shim_dir() / "mtmm_kernels"
        try:
            target.symlink_to(ROOT / "kernels", target_is_directory=True)
        except OSError:
            shutil.copytree(ROOT / "kernels", target)
        info["mtmm_kernels"] = "shim (kernels/ linked as mtmm_kernels)"
    else:
        info["mtmm_kernels"] = "installed"
    if not list(importlib.metadata.entry_points(group="mtmm")):
        version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
        version_text = version.group(1) if version else "0"
        dist = shim_dir() / f"mtmm-{version_text}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mtmm\nVersion: {version_text}\n")
        (dist / "entry_points.txt").write_text(_entry_points_from_pyproject())
        info["entry_points"] = "shim (pyproject's entry points in a temporary dist-info)"
    else:
        info["entry_points"] = "installed"
    extra = [str(ROOT)]
    if shim is not None:
        sys.path.insert(0, str(shim))
        extra.insert(0, str(shim))
        importlib.invalidate_caches()
    info["pythonpath"] = extra
    return info


IMPORT_INFO = ensure_importable()

import numpy as np  # noqa: E402
import torch  # noqa: E402

# ============================================================================= small utilities


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:limit]


def clean_json(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists, torch/numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


class Budget:
    """Seconds left of ``--time-budget``; sections and their items stop starting new work when it is spent."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def spent(self) -> bool:
        return self.left() <= 0

    def capped(self, seconds: float) -> "Budget":
        """A budget that is spent after ``seconds`` from now, or when this one is."""
        child = Budget(min(seconds, self.left()))
        return child


class Context:
    """What every section gets: arguments, device, timing settings, the report so far, and the budget."""

    def __init__(self, args: argparse.Namespace, device: str, budget: Budget, report: dict[str, Any]):
        self.args = args
        self.device = device
        self.cuda = device == "cuda"
        self.budget = budget
        self.report = report

    def log(self, message: str) -> None:
        print(f"[gpu_suite {self.budget.elapsed():6.0f}s] {message}", file=sys.stderr, flush=True)


# ============================================================================= timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median and spread of per-call times (ms)."""
    s = sorted(samples)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, max(0, int(round(p * (n - 1)))))]

    median = statistics.median(s)
    return {"median_ms": median, "mean_ms": statistics.fmean(s), "min_ms": s[0], "max_ms": s[-1],
            "p10_ms": q(0.1), "p90_ms": q(0.9), "iqr_ms": q(0.75) - q(0.25),
            "spread_pct": 100.0 * (q(0.9) - q(0.1)) / median if median > 0 else None, "reps": n}


def time_calls(fn: Callable[[], Any], device: str, reps: int, warmup: int, sample_ms: float = 1.0,
               max_inner: int = 200, inner: int | None = None) -> dict[str, Any]:
    """Per-call time of ``fn`` in ms: ``warmup`` calls, then ``reps`` samples of ``inner`` back-to-back calls.

    On CUDA each sample is bracketed by CUDA events (recorded on the current stream) and
    synchronised on its end event; on CPU by ``time.perf_counter``. ``inner`` (when None)
    makes a sample last about ``sample_ms``, from one timed call after the warm-up.
    """
    for _ in range(max(warmup, 0)):
        fn()
    sync(device)

    def one_sample(count: int) -> float:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(count):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / count
        began = time.perf_counter()
        for _ in range(count):
            fn()
        return (time.perf_counter() - began) * 1e3 / count

    if inner is None:
        estimate = one_sample(1)
        inner = max(1, min(max_inner, int(sample_ms / max(estimate, 1e-4))))
    samples = [one_sample(inner) for _ in range(max(reps, 1))]
    result = summarize(samples)
    result["inner"] = inner
    return result


def peak_extra_mib(fn: Callable[[], Any], device: str) -> float | None:
    """Peak CUDA memory of one call above what was allocated before it (MiB); None on CPU."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def cuda_kernels(fn: Callable[[], Any], device: str, top: int = 12) -> dict[str, Any] | None:
    """Number of GPU kernels one call of ``fn`` launches (profiler), and the most frequent names."""
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    counts: dict[str, int] = {}
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            name = event.name
            if name.startswith(("Memcpy", "Memset", "cudaMem")):
                continue
            counts[name] = counts.get(name, 0) + 1
    names = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return {"launches": sum(counts.values()), "distinct": len(counts),
            "top": [{"name": n[:160], "count": c} for n, c in names]}


# ============================================================================= section 1: environment


NVIDIA_SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.mem", "clocks.max.sm",
                     "clocks.max.mem", "clocks.applications.graphics", "power.draw", "power.limit",
                     "temperature.gpu", "utilization.gpu", "memory.used", "memory.total",
                     "clocks_throttle_reasons.active", "persistence_mode", "compute_mode", "mig.mode.current")


def nvidia_smi() -> dict[str, Any]:
    """Read-only ``nvidia-smi --query-gpu`` of the first GPU; fields it does not know are left out."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi not found"}
    try:  # every field in one query; one by one below when a field is unknown (it fails the whole query)
        done = subprocess.run([exe, f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader", "-i", "0"],
                              capture_output=True, text=True, timeout=30)
        parts = [v.strip() for v in done.stdout.strip().splitlines()[0].split(",")] if done.stdout.strip() else []
        if done.returncode == 0 and len(parts) == len(NVIDIA_SMI_FIELDS):
            return dict(zip(NVIDIA_SMI_FIELDS, parts))
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    values: dict[str, Any] = {}
    errors = []
    for field in NVIDIA_SMI_FIELDS:
        try:
            done = subprocess.run([exe, f"--query-gpu={field}", "--format=csv,noheader", "-i", "0"],
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError) as error:
            errors.append(f"{field}: {one_line(error)}")
            continue
        text = done.stdout.strip().splitlines()
        if done.returncode == 0 and text:
            values[field] = text[0].strip()
        else:
            errors.append(f"{field}: {(done.stderr or done.stdout).strip()[:120]}")
    if errors:
        values["unreadable"] = errors
    return values


def git_state() -> dict[str, Any]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return {"commit": None, "note": "no git checkout here"}
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError) as error:
        return {"commit": None, "error": one_line(error)}


def section_environment(ctx: Context) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "import": IMPORT_INFO,
        "git": git_state(),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("MTMM_", "TRITON_", "CUDA_", "TORCH_", "PYTORCH_", "NVIDIA_TF32"))},
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as error:  # noqa: BLE001
        env["triton"] = None
        env["triton_error"] = one_line(error)
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = list(torch.cuda.get_device_capability(0))
        env["sm_count"] = props.multi_processor_count
        env["memory_gib"] = props.total_memory / 2**30
        for attribute in ("L2_cache_size", "max_threads_per_multi_processor", "regs_per_multiprocessor",
                          "shared_memory_per_block_optin", "warp_size", "uuid"):
            if hasattr(props, attribute):
                env[attribute] = getattr(props, attribute)
        env["device_count"] = torch.cuda.device_count()
        env["nvidia_smi_start"] = nvidia_smi()
        try:
            env["clock_rate_mhz"] = torch.cuda.clock_rate()  # needs pynvml; else left out
        except Exception as error:  # noqa: BLE001
            env["clock_rate_error"] = one_line(error)
    else:
        env["device"] = f"cpu ({env['processor']})"
        env["capability"] = None
    return env


# ============================================================================= section 2: ceilings


def section_ceilings(ctx: Context) -> dict[str, Any]:
    """Measured copy bandwidth (bytes read + written) and a large bf16 matmul on random data."""
    a = ctx.args
    device = ctx.device
    megabytes = 8 if a.dry_run else 1024
    n = megabytes * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy = time_calls(lambda: dst.copy_(src), device, reps=a.reps, warmup=3, sample_ms=a.sample_ms)
    out: dict[str, Any] = {"copy_mib": megabytes, "copy": copy,
                           "copy_gbs": 2 * n * 4 / (copy["median_ms"] * 1e-3) / 1e9}
    del src, dst
    size = 256 if a.dry_run else 8192
    dtype = torch.float32 if a.dry_run else torch.bfloat16
    x = torch.randn(size, size, device=device, dtype=dtype)
    y = torch.randn(size, size, device=device, dtype=dtype)
    mm = time_calls(lambda: torch.matmul(x, y), device, reps=max(5, a.reps // 3), warmup=3, sample_ms=a.sample_ms)
    out.update(matmul_size=size, matmul_dtype=str(dtype).replace("torch.", ""), matmul=mm,
               matmul_tflops=2.0 * size**3 / (mm["median_ms"] * 1e-3) / 1e12)
    return out


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


DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}


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


# ============================================================================= section 7: pytest


def junit_summary(path: Path) -> dict[str, Any]:
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in suites:
        for key in totals:
            totals[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is not None:
                    failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": tag,
                                   "message": (node.get("message") or "")[:400]})
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    totals["failed_tests"] = failed[:50]
    return totals


def section_pytest(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    files = [f for f in a.pytest_files.split(",") if f]
    timeout = max(30.0, ctx.budget.left())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(IMPORT_INFO["pythonpath"] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                      else []))
    env.pop(ENV_BACKEND, None)
    if ctx.cuda:
        torch.cuda.empty_cache()  # the tests run in a second process on the same GPU
    with tempfile.TemporaryDirectory(prefix="mtmm_gpu_suite_pytest_") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   *files, *a.pytest_args]
        began = time.perf_counter()
        out: dict[str, Any] = {"command": command[1:], "timeout_s": timeout}
        try:
            done = subprocess.run(command, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout)
            out["returncode"] = done.returncode
            out["output_tail"] = (done.stdout + done.stderr)[-4000:]
        except subprocess.TimeoutExpired as error:
            out["returncode"] = None
            out["timed_out"] = True
            tail = error.stdout or b""
            out["output_tail"] = (tail.decode(errors="replace") if isinstance(tail, bytes) else tail)[-4000:]
        out["seconds"] = time.perf_counter() - began
        if junit.is_file():
            out["junit"] = junit_summary(junit)
    out["passed"] = out.get("returncode") == 0
    return out


# ============================================================================= the run


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

if __name__ == "__main__":
    raise SystemExit(main())
