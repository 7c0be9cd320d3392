"""The hooks a plugin implements to add components to mtmm.

Every hook receives a ``register`` callback: ``register(name, factory, **metadata)``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mtmm")
hookimpl = pluggy.HookimplMarker("mtmm")


@hookspec
def register_encoders(register):
    """Register modality encoders: factories of modules mapping one modality to tokens."""


@hookspec
def register_fusions(register):
    """Register fusion operators: factories of modules combining modality tokens."""


@hookspec
def register_heads(register):
    """Register task heads: factories of modules mapping a representation to a prediction."""


@hookspec
def register_architectures(register):
    """Register multitask architectures: factories of modules giving each task its features."""


@hookspec
def register_weightings(register):
    """Register loss-weighting strategies: factories of modules combining task losses."""


@hookspec
def register_datasets(register):
    """Register data sets: factories returning a data set object."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics: ``metric(prediction, target) -> float`` on a whole split, with the
    metadata ``higher_is_better`` (bool); a head lists the names of its metrics in ``metrics``."""


@hookspec
def register_losses(register):
    """Register task losses: ``loss(prediction, target, mask) -> Tensor []``, the mean over the samples
    where ``mask`` ``[B]`` is True; metadata ``needs_target`` and ``ignore_index`` (see mtmm_core.losses).
    A head names its loss by registered name in ``loss_kind``."""
