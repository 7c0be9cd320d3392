"""Built-in fusions: pooled (concat, mean, late, gated), tensor (TFN, LMF) and attention (MulT, Perceiver)."""

from mtmm_core import hookimpl
from mtmm_plugins.fusions.attention import CrossModalAttentionFusion, PerceiverFusion
from mtmm_plugins.fusions.base import Fusion
from mtmm_plugins.fusions.pooling import ConcatFusion, GatedFusion, LateFusion, MeanFusion
from mtmm_plugins.fusions.tensor import LowRankTensorFusion, TensorFusion

__all__ = [
    "ConcatFusion",
    "CrossModalAttentionFusion",
    "Fusion",
    "GatedFusion",
    "LateFusion",
    "LowRankTensorFusion",
    "MeanFusion",
    "PerceiverFusion",
    "TensorFusion",
]


@hookimpl
def register_fusions(register):
    register("concat", ConcatFusion)
    register("mean", MeanFusion)
    register("late", LateFusion)
    register("gated", GatedFusion)
    register("tfn", TensorFusion)
    register("lmf", LowRankTensorFusion)
    register("cross_attention", CrossModalAttentionFusion)
    register("perceiver", PerceiverFusion)
