"""Backend choice shared by the kernels: "auto", "triton" or "torch", and the environment override."""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_BACKEND = "MTMM_KERNEL_BACKEND"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``import triton`` succeeds (tried once, on first use)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or a broken install raising something else)
        return False
    return True


def triton_interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` is set: Triton kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def choose_backend(backend: str, device: torch.device, triton_unsupported: Callable[[], str | None]) -> str:
    """Turn the requested backend (after ``MTMM_KERNEL_BACKEND`` overrides "auto") into "triton" or "torch".

    ``triton_unsupported()`` says why the Triton kernel cannot take the call (None when it can):
    an explicit "triton" then raises ValueError; "auto" picks Triton only for CUDA tensors.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(ENV_BACKEND, "").strip().lower()
        if env and env not in BACKENDS:
            raise ValueError(f"environment variable {ENV_BACKEND} must be one of {BACKENDS}, got {env!r}")
        backend = env or "auto"
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"  # decided without importing triton
    why = triton_unsupported()
    if backend == "triton" and why is not None:
        raise ValueError(f"backend='triton' cannot run: {why}")
    return "triton" if why is None else "torch"
