"""Built-in evaluation metrics, registered through the same ``register_metrics`` hook a plugin uses.

Each is ``metric(prediction, target) -> float`` on a whole split (see :mod:`mtmm_core.metrics`).
"""

from __future__ import annotations

import mtmm_core
from mtmm_core import metrics


@mtmm_core.hookimpl
def register_metrics(register):
    register("accuracy", metrics.accuracy, higher_is_better=True)
    register("macro_f1", metrics.macro_f1, higher_is_better=True)
    register("auroc", metrics.auroc, higher_is_better=True)
    register("mae", metrics.mae, higher_is_better=False)
    register("rmse", metrics.rmse, higher_is_better=False)
    register("r2", metrics.r2, higher_is_better=True)
    register("retrieval_accuracy", metrics.retrieval_accuracy, higher_is_better=True)
