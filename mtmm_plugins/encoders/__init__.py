"""Built-in encoders: one module per family, registered under the names below."""

from mtmm_core import hookimpl
from mtmm_plugins.encoders.cnn import ImageCNN
from mtmm_plugins.encoders.hf_backbone import HFEncoder
from mtmm_plugins.encoders.patch_transformer import ImagePatchTransformer
from mtmm_plugins.encoders.sequence_transformer import SequenceTransformer
from mtmm_plugins.encoders.tabular import TabularMLP
from mtmm_plugins.encoders.text import ByteTextEncoder, ByteTokenizer
from mtmm_plugins.encoders.timm_backbone import TimmEncoder

__all__ = [
    "ByteTextEncoder",
    "ByteTokenizer",
    "HFEncoder",
    "ImageCNN",
    "ImagePatchTransformer",
    "SequenceTransformer",
    "TabularMLP",
    "TimmEncoder",
    "register_encoders",
]


@hookimpl
def register_encoders(register):
    """Register the built-in encoders (the description is each class's first docstring line)."""
    register("cnn", ImageCNN)
    register("patch_transformer", ImagePatchTransformer)
    register("sequence_transformer", SequenceTransformer, example_params={"in_features": 13})
    register("text", ByteTextEncoder)
    register("tabular", TabularMLP, example_params={"num_numeric": 3, "categories": [4, 2]})
    # Pretrained backbones: listed without their extras, which they import only when built.
    register("timm", TimmEncoder, requires="timm", file_params=["pretrained"], example_params={"model_name": "resnet18"})
    register("hf", HFEncoder, requires="transformers", file_params=["path"], example_params={"config": {
        "model_type": "bert", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}})
