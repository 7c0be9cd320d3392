"""Built-in multitask architectures: hard parameter sharing and multi-gate mixture of experts."""

from mtmm_core import hookimpl
from mtmm_plugins.architectures.hard_sharing import HardParameterSharing
from mtmm_plugins.architectures.mmoe import MultiGateMixtureOfExperts

__all__ = ["HardParameterSharing", "MultiGateMixtureOfExperts"]


@hookimpl
def register_architectures(register):
    register("hard_sharing", HardParameterSharing)
    register("mmoe", MultiGateMixtureOfExperts)
