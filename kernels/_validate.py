"""Argument checks for :func:`mtmm_kernels.cross_modal_attention`.

Every check raises ``ValueError`` naming the argument and saying what was
expected, so a caller sees e.g. ``k must have shape [B=2, H=4, Lk, D=64] ...``
instead of an error from deep inside a kernel.

Checks of shapes, dtypes and devices are free. A check that reads tensor *values*
(``key_lengths`` in ``[0, Lk]``; the labels of the multitask loss) is a device sync on a
GPU and a graph break under ``torch.compile``: those run only while
:func:`value_checks_enabled` is true. They are on by default, so a direct call gets a
clear error; mtmm's trainer turns them off for its steps (``value_checks(False)``) after
its batch loader has checked the batch's values on the host, and they are off while
``torch.compile`` traces.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

_value_checks_on = True  # process-wide; see value_checks()


def value_checks_enabled() -> bool:
    """True when checks that read tensor values on the host (a device sync each) should run.

    On by default; off inside ``with value_checks(False):`` and while ``torch.compile`` traces.
    mtmm_core, mtmm_plugins and plugin components ask this before any such check.
    """
    return not torch.compiler.is_compiling() and _value_checks_on


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn the value checks on or off for the block (process-wide; the previous setting returns after it).

    ``with value_checks(False):`` is for code whose inputs were already checked where they entered
    (mtmm's trainer checks each batch on the host before copying it to the device), so that the
    device never waits for the host in between.
    """
    global _value_checks_on
    previous, _value_checks_on = _value_checks_on, bool(enabled)
    try:
        yield
    finally:
        _value_checks_on = previous

#: Dtypes accepted by the public function (the Triton backend drops float64).
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class AttentionArgs:
    """Checked arguments: tensors as given, ``scale`` resolved to a float.

    ``q`` ``[B, H, Lq, D]``, ``k``/``v`` ``[B, H, Lk, D]``, ``key_lengths`` integer ``[B]``
    or None, ``key_padding_mask`` bool ``[B, Lk]`` or None (at most one of the two).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    key_lengths: torch.Tensor | None
    key_padding_mask: torch.Tensor | None
    scale: float


def _check_4d(name: str, t: object, dims: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {dims}, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor of shape {dims}, got shape {tuple(t.shape)}")
    return t


def validate_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    scale: float | None,
) -> AttentionArgs:
    """Check shapes, dtypes, devices and mask arguments; return them with ``scale`` resolved.

    ``key_lengths`` given as a list/tuple of ints is converted to a tensor on ``q``'s
    device. Checking that lengths lie in ``[0, Lk]`` reads them on the host (one
    device sync on CUDA), so it runs only while :func:`value_checks_enabled`.
    """
    _check_4d("q", q, "[B, H, Lq, D]")
    B, H, _, D = q.shape
    _check_4d("k", k, f"[B={B}, H={H}, Lk, D={D}]")
    _check_4d("v", v, f"[B={B}, H={H}, Lk, D={D}]")
    Lk = k.shape[2]
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
        raise ValueError(f"k must have shape [B={B}, H={H}, Lk, D={D}] to match q, got {tuple(k.shape)}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have the shape of k {tuple(k.shape)} ([B, H, Lk, D]), got {tuple(v.shape)}")
    if D < 1:
        raise ValueError(f"q must have a head dim D >= 1, got shape {tuple(q.shape)}")
    if Lk < 1:
        raise ValueError(f"k and v must have at least one key (Lk >= 1), got shape {tuple(k.shape)}")

    if q.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise ValueError(f"q has unsupported dtype {q.dtype}; expected one of {names}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")

    if key_lengths is not None and key_padding_mask is not None:
        raise ValueError("give at most one of key_lengths and key_padding_mask, not both")

    if key_lengths is not None:
        if not isinstance(key_lengths, torch.Tensor):
            key_lengths = torch.as_tensor(key_lengths, device=q.device)
        if key_lengths.dtype.is_floating_point or key_lengths.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise ValueError(f"key_lengths must be an integer tensor of shape [B={B}], got dtype {key_lengths.dtype}")
        if tuple(key_lengths.shape) != (B,):
            raise ValueError(f"key_lengths must have shape [B={B}], got {tuple(key_lengths.shape)}")
        if key_lengths.device != q.device:
            raise ValueError(f"key_lengths must be on the device of q ({q.device}), got {key_lengths.device}")
        if B > 0 and value_checks_enabled() and bool(((key_lengths < 0) | (key_lengths > Lk)).any()):
            lo, hi = int(key_lengths.min()), int(key_lengths.max())
            raise ValueError(f"key_lengths must lie in [0, Lk={Lk}], got values in [{lo}, {hi}]")

    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            got = key_padding_mask.dtype if isinstance(key_padding_mask, torch.Tensor) else type(key_padding_mask)
            raise ValueError(f"key_padding_mask must be a bool tensor of shape [B={B}, Lk={Lk}], got {got}")
        if tuple(key_padding_mask.shape) != (B, Lk):
            raise ValueError(
                f"key_padding_mask must have shape [B={B}, Lk={Lk}], got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(
                f"key_padding_mask must be on the device of q ({q.device}), got {key_padding_mask.device}"
            )

    if scale is None:
        scale = D**-0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a float or None, got {type(scale).__name__}")
    return AttentionArgs(q, k, v, key_lengths, key_padding_mask, float(scale))
