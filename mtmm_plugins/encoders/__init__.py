"""Built-in encoders: one module per family, registered under the names below."""

from mtmm_core import hookimpl
from mtmm_plugins.encoders.cnn import ImageCNN
from mtmm_plugins.encoders.patch_transformer import ImagePatchTransformer
from mtmm_plugins.encoders.sequence_transformer import SequenceTransformer
from mtmm_plugins.encoders.tabular import TabularMLP
from mtmm_plugins.encoders.text import ByteTextEncoder, ByteTokenizer

__all__ = [
    "ByteTextEncoder",
    "ByteTokenizer",
    "ImageCNN",
    "ImagePatchTransformer",
    "SequenceTransformer",
    "TabularMLP",
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
