"""Built-in loss weightings: equal, static and uncertainty."""

from mtmm_core import hookimpl
from mtmm_plugins.weightings.equal import EqualWeighting
from mtmm_plugins.weightings.static import StaticWeighting
from mtmm_plugins.weightings.uncertainty import UncertaintyWeighting

__all__ = ["EqualWeighting", "StaticWeighting", "UncertaintyWeighting"]


@hookimpl
def register_weightings(register):
    register("equal", EqualWeighting)
    register("static", StaticWeighting)
    register("uncertainty", UncertaintyWeighting)
