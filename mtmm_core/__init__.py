"""mtmm: multimodal, multitask learning composed from registry names."""

from mtmm_core.hookspecs import hookimpl

__all__ = ["hookimpl"]
