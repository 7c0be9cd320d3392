"""Fused kernels for mtmm (import name ``mtmm_kernels``), with PyTorch fallbacks.

Importing this package never imports triton; the Triton kernels load on first use.
It registers the PyTorch operators ``mtmm::cross_modal_attention`` and ``mtmm::multitask_loss``
(and the Triton launches behind them, see ``_ops.py``), so ``torch.compile`` traces through both.
"""

from __future__ import annotations

from ._validate import value_checks, value_checks_enabled
from .attention import cross_modal_attention, resolve_backend
from .attention_reference import attention_reference
from .multitask_loss import multitask_loss
from .multitask_loss_reference import multitask_loss_reference

__all__ = [
    "attention_reference",
    "cross_modal_attention",
    "multitask_loss",
    "multitask_loss_reference",
    "resolve_backend",
    "value_checks",
    "value_checks_enabled",
]
