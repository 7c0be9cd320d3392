"""Sections 1 and 2: the machine (versions, device properties, ``nvidia-smi``, git) and its measured ceilings."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import torch

from .common import Context, one_line, time_calls
from .importable import IMPORT_INFO, ROOT


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
