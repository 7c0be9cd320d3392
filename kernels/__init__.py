"""Fused kernels for mtmm (import name ``mtmm_kernels``), with PyTorch fallbacks.

Importing this package never imports triton; the Triton kernels load on first use.
It registers the PyTorch operators ``mtmm::cross_modal_attention`` and ``mtmm::multitask_loss``
(and the Triton launches behind them, see ``_ops.py``), so ``torch.compile`` traces through both.
"""

from __future__ import annotations

import sys

if __name__ != "mtmm_kernels":
    # This source folder imported as ``kernels``: the clone's root is on sys.path (``python -m pytest``
    # or ``python -c`` run there) and something asked for Hugging Face's ``kernels`` package, as
    # transformers does when it starts. Running the package a second time under that name would
    # register the operators twice; stand in for the installed ``mtmm_kernels`` instead.
    import importlib

    sys.modules[__name__] = importlib.import_module("mtmm_kernels")
else:
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
