"""Built-in heads: classification, binary, regression and contrastive alignment."""

from mtmm_core import hookimpl
from mtmm_plugins.heads.binary import BinaryHead
from mtmm_plugins.heads.classification import ClassificationHead
from mtmm_plugins.heads.contrastive import ContrastiveAlignmentHead
from mtmm_plugins.heads.regression import RegressionHead

__all__ = ["BinaryHead", "ClassificationHead", "ContrastiveAlignmentHead", "RegressionHead"]


@hookimpl
def register_heads(register):
    register("classification", ClassificationHead, example_params={"num_classes": 5})
    register("binary", BinaryHead)
    register("regression", RegressionHead)
    register("contrastive", ContrastiveAlignmentHead, example_params={"modalities": ["a", "b"]})
