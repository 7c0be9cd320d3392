"""mtmm: multimodal, multitask learning composed from registry names."""

from mtmm_core.api import Run, load_run, train
from mtmm_core.components import create, describe, get_component, list_components
from mtmm_core.contracts import Batch, EncoderOutput, masked_mean
from mtmm_core.databuild import build_data
from mtmm_core.errors import (
    AmbiguousComponentError,
    MtmmError,
    PluginError,
    SpecError,
    UnknownComponentError,
)
from mtmm_core.hookspecs import hookimpl
from mtmm_core.model import ModelOutput, MultimodalMultitaskModel
from mtmm_core.plugins import register_plugin, unregister_plugin
from mtmm_core.registry import KINDS, Component
from mtmm_core.spec import build_model, load_spec

__all__ = [
    "KINDS",
    "AmbiguousComponentError",
    "Batch",
    "Component",
    "EncoderOutput",
    "ModelOutput",
    "MtmmError",
    "MultimodalMultitaskModel",
    "PluginError",
    "Run",
    "SpecError",
    "UnknownComponentError",
    "build_data",
    "build_model",
    "create",
    "describe",
    "get_component",
    "hookimpl",
    "list_components",
    "load_run",
    "load_spec",
    "masked_mean",
    "register_plugin",
    "train",
    "unregister_plugin",
]
