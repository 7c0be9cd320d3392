"""Built-in weightings: loss-level (equal, static, uncertainty, dwa, rlw, gls, famo) and
gradient-level (gradnorm, pcgrad, mgda, cagrad, imtl_g, aligned_mtl, upgrad, dualproj, config,
nash_mtl, fairgrad, gradvac, graddrop, imtl, db_mtl). See docs/weightings.md."""

from mtmm_core import hookimpl
from mtmm_plugins.weightings.aligned_mtl import AlignedMultitask
from mtmm_plugins.weightings.cagrad import ConflictAverseGradient
from mtmm_plugins.weightings.conflict_free import ConflictFreeGradient
from mtmm_plugins.weightings.db_mtl import DualBalancing
from mtmm_plugins.weightings.dualproj import DualProjection
from mtmm_plugins.weightings.dwa import DynamicWeightAverage
from mtmm_plugins.weightings.equal import EqualWeighting
from mtmm_plugins.weightings.fairgrad import FairGradient
from mtmm_plugins.weightings.famo import FastAdaptiveWeighting
from mtmm_plugins.weightings.gls import GeometricLossWeighting
from mtmm_plugins.weightings.graddrop import GradientSignDropout
from mtmm_core.weighting_bases import GradientWeighting, GramianWeighting
from mtmm_plugins.weightings.gradnorm import GradNormWeighting
from mtmm_plugins.weightings.imtl import ImpartialGradientWeighting
from mtmm_plugins.weightings.imtl_full import ImpartialMultitask
from mtmm_plugins.weightings.gradvac import GradientVaccine
from mtmm_plugins.weightings.mgda import MultipleGradientDescent
from mtmm_plugins.weightings.nash_mtl import NashBargaining
from mtmm_plugins.weightings.pcgrad import ProjectingConflictingGradients
from mtmm_plugins.weightings.rlw import RandomLossWeighting
from mtmm_plugins.weightings.static import StaticWeighting
from mtmm_plugins.weightings.uncertainty import UncertaintyWeighting
from mtmm_plugins.weightings.upgrad import UnconflictingProjection

#: Registry name -> factory, in the order ``mtmm list weighting`` shows them.
BUILTIN_WEIGHTINGS = {
    "equal": EqualWeighting,
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "rlw": RandomLossWeighting,
    "gls": GeometricLossWeighting,
    "famo": FastAdaptiveWeighting,
    "gradnorm": GradNormWeighting,
    "pcgrad": ProjectingConflictingGradients,
    "mgda": MultipleGradientDescent,
    "cagrad": ConflictAverseGradient,
    "imtl_g": ImpartialGradientWeighting,
    "aligned_mtl": AlignedMultitask,
    "upgrad": UnconflictingProjection,
    "dualproj": DualProjection,
    "config": ConflictFreeGradient,
    "nash_mtl": NashBargaining,
    "fairgrad": FairGradient,
    "gradvac": GradientVaccine,
    "graddrop": GradientSignDropout,
    "imtl": ImpartialMultitask,
    "db_mtl": DualBalancing,
}

__all__ = [factory.__name__ for factory in BUILTIN_WEIGHTINGS.values()] + ["BUILTIN_WEIGHTINGS", "GradientWeighting", "GramianWeighting"]


@hookimpl
def register_weightings(register):
    for name, factory in BUILTIN_WEIGHTINGS.items():
        register(name, factory, **({"example_params": {"weights": [1.0, 0.5, 2.0]}} if name == "static" else {}))
