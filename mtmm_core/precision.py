"""``train.precision``: the dtype the training step computes in, and the loss scaling fp16 needs.

* ``auto`` (the default): bfloat16 autocast on CUDA, float32 elsewhere (what mtmm always did).
* ``fp32``: no autocast anywhere.
* ``bf16``: ``torch.autocast`` to bfloat16 on any device, the CPU included. No loss scaling:
  bfloat16 has float32's exponent range.
* ``fp16``: ``torch.autocast`` to float16 with a :class:`torch.amp.GradScaler`. CUDA only (the CPU's
  float16 kernels are few and slow; bf16 is the CPU's half precision), and loss-level weightings
  only: the scaler multiplies the weighted total before its backward, and a gradient-level
  weighting combines the task gradients itself, from unscaled losses.

The scaler's check for infinite gradients (``GradScaler.step``) reads a flag back from the device
once per step: fp16 is the one precision whose training step is not free of host syncs.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from mtmm_core.errors import SpecError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device_type`` (None: float32, no autocast)."""
    if precision == "auto":
        return torch.bfloat16 if device_type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Precision:
    """Autocast and (fp16) loss scaling for one trainer on ``device``; ``gradient_level``: the model's weighting
    combines gradients (fp16 then is refused: it needs a loss-level weighting)."""

    def __init__(self, precision: str, device: torch.device, gradient_level: bool = False):
        if precision == "fp16" and device.type != "cuda":
            raise SpecError("train.precision", f"'fp16' needs a CUDA GPU (this run trains on {device.type}): "
                            "float16 autocast with loss scaling is a GPU technique, and the CPU has few, slow "
                            "float16 kernels. Use 'bf16' (bfloat16 autocast, no loss scaling, works on the CPU) "
                            "or 'fp32'")
        if precision == "fp16" and gradient_level:
            raise SpecError("train.precision", "'fp16' needs a loss-level weighting: its GradScaler scales the "
                            "weighted total before the backward, and a gradient-level weighting combines the "
                            "task gradients from the unscaled losses itself. Use 'bf16' (no loss scaling) or 'fp32'")
        self.name = precision
        self.device_type = device.type
        self.dtype = autocast_dtype(precision, device.type)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> ContextManager[Any]:
        """The autocast context of the forward pass (a no-op in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self, total: torch.Tensor) -> torch.Tensor:
        """``total`` multiplied by the loss scale (fp16), else ``total`` itself."""
        return total if self.scaler is None else self.scaler.scale(total)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale before they are clipped (fp16; else nothing)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 the scaler's, which skips a step with infinite gradients."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state for ``last.pt`` (empty without one)."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the scaler's state (a no-op without a scaler or a saved state)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
