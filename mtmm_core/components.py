"""The public registry API: list, describe and create components by name."""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
from typing import Any, Callable

from mtmm_core import plugins
from mtmm_core.errors import SpecError
from mtmm_core.registry import Component, normalize_kind

# Arguments that build_model supplies itself; a user never writes them in a spec.
WIRING_ARGUMENTS = {"input_dims", "in_dim", "tasks", "modality_dims"}
# Arguments that build_model fills from the spec's top level unless the component's own entry sets them.
SPEC_DEFAULTS = {kind: {"dim": "model.dim"} for kind in ("encoder", "fusion", "architecture")}


def list_components(kind: str | None = None, pattern: str = "*") -> list[Component]:
    """Registered components of ``kind`` (all kinds if None) whose name matches ``pattern`` (fnmatch)."""
    return plugins.registry().components(kind, pattern)


def get_component(kind: str, name: str) -> Component:
    """The component registered as ``name`` (or ``distribution:name``) of ``kind``."""
    return plugins.registry().resolve(kind, name)


def parameters(factory: Callable[..., Any], kind: str | None = None) -> list[dict[str, Any]]:
    """The keyword parameters of ``factory``: name, type, default, required, whether mtmm sets it, and
    ``default_from``: the spec key whose value replaces the default for a component of ``kind`` (e.g. an
    encoder's ``dim`` comes from ``model.dim`` unless its own entry sets ``dim``), else None."""
    signature = inspect.signature(factory)
    hints = _type_hints(factory)
    rows = []
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or name == "self":
            continue
        required = parameter.default is inspect.Parameter.empty
        hint = hints.get(name, parameter.annotation)
        rows.append({
            "name": name,
            "type": _type_name(hint),
            "default": None if required else parameter.default,
            "required": required,
            "set_by_mtmm": name in WIRING_ARGUMENTS,
            "default_from": SPEC_DEFAULTS.get(kind or "", {}).get(name),
        })
    return rows


def describe(kind: str, name: str) -> dict[str, Any]:
    """A component's description, provenance and parameters, as a JSON-ready dict."""
    component = get_component(kind, name)
    return {
        "kind": component.kind,
        "name": component.name,
        "qualified_name": component.qualified_name,
        "description": component.description,
        "distribution": component.distribution,
        "version": component.version,
        "plugin": component.plugin,
        "parameters": parameters(component.factory, component.kind),
        "metadata": {key: value for key, value in component.metadata.items() if _is_json_value(value)},
    }


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Instantiate the component ``name`` of ``kind`` with ``kwargs``, checked against its signature."""
    kind = normalize_kind(kind)
    component = get_component(kind, name)
    check_arguments(component, kwargs, path="")
    return component.factory(**kwargs)


def check_arguments(component: Component, arguments: dict[str, Any], path: str,
                    supplied: frozenset[str] = frozenset()) -> None:
    """Raise :class:`SpecError` at ``path.<arg>`` for an unknown, missing or mistyped argument.

    ``supplied`` names arguments that mtmm passes itself, so they are not missing.
    """
    signature = inspect.signature(component.factory)
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    known = [n for n, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    hints = _type_hints(component.factory)
    prefix = f"{path}." if path else ""
    label = f"{component.kind} {component.name!r}"
    for key, value in arguments.items():
        if key not in known:
            if accepts_any:
                continue
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            settable = [n for n in known if n not in WIRING_ARGUMENTS]
            raise SpecError(f"{prefix}{key}", f"unknown parameter of {label}{hint} Valid parameters: "
                                              f"{', '.join(settable) or '(none)'}")
        expected = hints.get(key)
        if expected is not None and not _matches(value, expected):
            raise SpecError(f"{prefix}{key}", f"{label} expects {_type_name(expected)}, got "
                                              f"{type(value).__name__} {value!r}")
    for key, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is inspect.Parameter.empty and key not in arguments and key not in supplied:
            raise SpecError(f"{prefix}{key}", f"missing required parameter of {label}")


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks rather than fail
        return {}


def _matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` fits the type hint ``expected`` (plain types, containers, unions, Literal)."""
    if expected is Any or expected is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence) or expected in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, collections.abc.Mapping) or expected is dict:
        return isinstance(value, dict)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def _type_name(hint: Any) -> str:
    if hint is inspect.Parameter.empty:
        return "any"
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__name__
    return str(hint).replace("typing.", "")


def _is_json_value(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))
