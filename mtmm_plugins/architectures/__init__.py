"""Built-in multitask architectures: hard and soft parameter sharing, MMoE, cross-stitch, CGC and PLE."""

from mtmm_core import hookimpl
from mtmm_plugins.architectures.cross_stitch import CrossStitchNetwork
from mtmm_plugins.architectures.hard_sharing import HardParameterSharing
from mtmm_plugins.architectures.mmoe import MultiGateMixtureOfExperts
from mtmm_plugins.architectures.ple import CustomizedGateControl, ProgressiveLayeredExtraction
from mtmm_plugins.architectures.soft_sharing import SoftParameterSharing

__all__ = [
    "CrossStitchNetwork",
    "CustomizedGateControl",
    "HardParameterSharing",
    "MultiGateMixtureOfExperts",
    "ProgressiveLayeredExtraction",
    "SoftParameterSharing",
]


@hookimpl
def register_architectures(register):
    register("hard_sharing", HardParameterSharing)
    register("mmoe", MultiGateMixtureOfExperts)
    register("soft_sharing", SoftParameterSharing)
    register("cross_stitch", CrossStitchNetwork)
    register("cgc", CustomizedGateControl)
    register("ple", ProgressiveLayeredExtraction)
