"""Every built-in encoder, fusion, architecture and head refuses invalid numeric parameters.

The cases come from the registry, so a new built-in is covered without an edit here: every
int parameter must refuse -1, True and (unless ZERO_ALLOWED lists it) 0, every float parameter
NaN, inf and True (and the values of FLOAT_INVALID), each with a ValueError that names the
parameter and the value given.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from torch import nn

from mtmm_core import build_model, list_components
from mtmm_core.components import get_component, parameters
from mtmm_core.errors import SpecError
from mtmm_core.registry import is_builtin

KINDS = ("encoder", "fusion", "architecture", "head")

# What build_model passes to each kind itself, and values for the parameters without a default.
WIRING: dict[str, dict[str, Any]] = {
    "encoder": {},
    "fusion": {"input_dims": {"image": 8, "audio": 8}},
    "architecture": {"in_dim": 8, "tasks": ["digit", "sum"]},
    "head": {"in_dim": 8, "modality_dims": {"image": 8, "audio": 8}, "modalities": ["image", "audio"]},
}
REQUIRED = {"in_features": 3, "num_numeric": 3, "num_classes": 3, "model_name": "resnet18"}

# (kind, name, parameter) whose 0 is meaningful, with the other arguments that 0 needs.
ZERO_ALLOWED: dict[tuple[str, str, str], dict[str, Any]] = {
    ("encoder", "tabular", "num_numeric"): {"categories": [3]},  # categorical columns only
    ("fusion", "perceiver", "depth"): {},  # the cross-attention block alone
    ("architecture", "hard_sharing", "depth"): {},  # no trunk: the identity
    ("architecture", "cgc", "shared_experts"): {},  # each task only its own experts
    ("architecture", "cgc", "task_experts"): {},  # only shared experts (like mmoe)
    ("architecture", "ple", "shared_experts"): {},
    ("architecture", "ple", "task_experts"): {},
    ("head", "binary", "hidden"): {},  # a single linear layer
    ("head", "classification", "hidden"): {},
    ("head", "regression", "hidden"): {},
}

# Invalid values of float parameters besides NaN, +-inf and True, which every one refuses.
FLOAT_INVALID: dict[str, tuple[float, ...]] = {
    "dropout": (-0.1, 1.0),
    "self_weight": (-0.1, 1.1),
    "coupling": (-0.1,),
    "temperature": (0.0, 1.5),
    "target_std": (0.0, -1.0),
}
NON_FINITE = (math.nan, math.inf, -math.inf)


def builtins(kind: str) -> list[str]:
    return [c.name for c in list_components(kind) if is_builtin(c)]


def arguments(kind: str, name: str, **overrides: Any) -> dict[str, Any]:
    """Valid arguments for the built-in ``name``: its wiring, its required values, then ``overrides``."""
    accepted = {row["name"]: row for row in parameters(get_component(kind, name).factory)}
    built = {key: value for key, value in WIRING[kind].items() if key in accepted}
    built.update({key: value for key, value in REQUIRED.items() if key in accepted and accepted[key]["required"]})
    return {**built, **overrides}


def build(kind: str, name: str, **overrides: Any) -> Any:
    return get_component(kind, name).factory(**arguments(kind, name, **overrides))


def invalid_values(kind: str, name: str, row: dict[str, Any]) -> list[tuple[Any, Any]]:
    """``(argument value, the bad value its error must show)`` for one parameter of one component."""
    type_name, parameter = row["type"], row["name"]
    if type_name in ("int", "int | None"):
        bad = [-1, True] + ([] if (kind, name, parameter) in ZERO_ALLOWED else [0])
        return [(value, value) for value in bad]
    if type_name == "float":
        return [(value, value) for value in (*NON_FINITE, True, *FLOAT_INVALID.get(parameter, ()))]
    if type_name.endswith("Sequence[int]"):
        return [([value], value) for value in (-1, 0, True)]
    if type_name == "dict[str, int]":
        base = arguments(kind, name).get(parameter)
        if isinstance(base, dict) and base:
            first = next(iter(base))
            return [({**base, first: value}, value) for value in (-1, 0, True)]
    return []


def cases() -> list[Any]:
    found = []
    for kind in KINDS:
        for name in builtins(kind):
            for row in parameters(get_component(kind, name).factory):
                for value, shown in invalid_values(kind, name, row):
                    found.append(pytest.param(kind, name, row["name"], value, shown,
                                              id=f"{kind}-{name}-{row['name']}={value!r}"))
    return found


@pytest.mark.parametrize(("kind", "name", "parameter", "value", "shown"), cases())
def test_invalid_numeric_parameter_is_refused_by_name(kind, name, parameter, value, shown):
    with pytest.raises(ValueError) as error:
        build(kind, name, **{parameter: value})
    message = str(error.value)
    assert parameter in message and repr(shown) in message, message


def test_every_kind_has_built_ins_with_numeric_parameters():
    assert all(builtins(kind) for kind in KINDS)
    assert len(cases()) > 200


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_build(kind):
    for name in builtins(kind):
        if get_component(kind, name).metadata.get("requires"):
            continue  # a pretrained backbone: an optional extra and model files (tests/test_pretrained_encoders.py)
        assert isinstance(build(kind, name), nn.Module), name


@pytest.mark.parametrize(("kind", "name", "parameter"), sorted(ZERO_ALLOWED))
def test_zero_builds_where_it_means_something(kind, name, parameter):
    extra = ZERO_ALLOWED[(kind, name, parameter)]
    assert isinstance(build(kind, name, **{parameter: 0, **extra}), nn.Module)


def test_heads_must_divide_the_attention_width():
    with_heads = [(kind, name) for kind in KINDS for name in builtins(kind)
                  if "heads" in {row["name"] for row in parameters(get_component(kind, name).factory)}]
    assert len(with_heads) >= 5
    for kind, name in with_heads:
        with pytest.raises(ValueError, match=r"expected dim divisible by heads=3, got dim=32"):
            build(kind, name, dim=32, heads=3)


def test_image_size_must_be_a_multiple_of_patch_size():
    with pytest.raises(ValueError, match=r"expected image_size divisible by patch_size=5, got image_size=32"):
        build("encoder", "patch_transformer", image_size=32, patch_size=5)


@pytest.mark.parametrize("name", ["cgc", "ple"])
def test_a_task_gate_needs_at_least_one_expert(name):
    with pytest.raises(ValueError, match=r"shared_experts \+ task_experts must be at least 1"):
        build("architecture", name, shared_experts=0, task_experts=0)


def test_build_model_names_the_spec_path_and_the_parameter():
    spec = {
        "dim": 32,
        "encoders": {"image": {"name": "patch_transformer", "depth": -1}},
        "fusion": {"name": "mean"},
        "tasks": {"digit": {"head": "classification", "num_classes": 10}},
    }
    with pytest.raises(SpecError) as error:
        build_model(spec)
    assert error.value.path.startswith("encoders.image")
    assert str(error.value).startswith("encoders.image")
    assert "depth must be an integer >= 1, got -1" in str(error.value)
