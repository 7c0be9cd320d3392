"""Plugin discovery and loading: the ``mtmm`` entry-point group, loaded lazily and once.

Environment variables:
- ``MTMM_LOAD_PLUGINS``: comma-separated allowlist of distributions; empty = built-ins only.
- ``MTMM_DISABLE_PLUGINS``: comma-separated blocklist of distributions.
- ``MTMM_STRICT_PLUGINS=1``: a plugin that fails to load is an error instead of a warning.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from mtmm_core import hookspecs
from mtmm_core.errors import PluginError
from mtmm_core.registry import (
    BUILTIN_DISTRIBUTION,
    HOOK_OF_KIND,
    Component,
    Registry,
    first_docstring_line,
    normalize_distribution,
)

ENTRY_POINT_GROUP = "mtmm"
IN_PROCESS = "<in-process>"


class PluginLoadWarning(UserWarning):
    """A plugin failed to load; the others were loaded."""


class ShadowingWarning(PluginLoadWarning):
    """A plugin registered a (kind, name) that another distribution (perhaps mtmm itself) also has."""


@dataclass
class PluginInfo:
    """What ``mtmm plugins`` shows about one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    status: str  # "loaded", "failed" or "disabled"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    # Names this plugin shares with another distribution: {"kind", "name", "distributions",
    # "resolves_to" (the distribution the plain name selects, or None when it is ambiguous), "use"}.
    clashes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _State:
    registry: Registry
    plugins: dict[str, PluginInfo]
    manager: pluggy.PluginManager


_lock = threading.RLock()
_state: _State | None = None
_in_process: dict[str, object] = {}


def _env_set(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {normalize_distribution(item) for item in value.split(",") if item.strip()}


def _excluded_reason(distribution: str) -> str | None:
    name = normalize_distribution(distribution)
    blocked = _env_set("MTMM_DISABLE_PLUGINS") or set()
    allowed = _env_set("MTMM_LOAD_PLUGINS")
    if name in blocked:
        return "disabled by MTMM_DISABLE_PLUGINS"
    if allowed is not None and name != BUILTIN_DISTRIBUTION and name not in allowed:
        return "not in MTMM_LOAD_PLUGINS"
    return None


def _fail(info: PluginInfo, error: BaseException, what: str) -> None:
    info.status = "failed"
    info.error = f"{type(error).__name__}: {error}"
    message = f"mtmm plugin {info.name!r} from distribution {info.distribution!r} failed to {what}: {info.error}"
    if os.environ.get("MTMM_STRICT_PLUGINS", "") not in ("", "0"):
        raise PluginError(message + " (MTMM_STRICT_PLUGINS is set)") from error
    warnings.warn(message + "; the other plugins are loaded. Set MTMM_STRICT_PLUGINS=1 to make this an error.",
                  PluginLoadWarning, stacklevel=3)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry_point.dist.name if entry_point.dist else "unknown"
        key = (normalize_distribution(distribution), entry_point.name)
        if key not in seen:  # the same distribution found twice on sys.path
            seen.add(key)
            unique.append(entry_point)
    return unique


def _register_with_manager(manager: pluggy.PluginManager, plugin: object, info: PluginInfo) -> bool:
    """Register ``plugin``; False (after :func:`_fail`) when its hooks do not match the hook specs.

    pluggy rejects an argument that is not in the spec at ``register`` time (and leaves the manager
    untouched); a hook name that is not a spec (``register_encoder``) is only found by
    ``check_pending``, so it is looked for here, per plugin, and the plugin is unregistered again.
    """
    if manager.is_registered(plugin):  # e.g. register_plugin() on the module an installed entry point names
        _fail(info, PluginError(
            f"{info.module} is already loaded as plugin {manager.get_name(plugin)!r} (through its entry point); "
            f"its components are registered once, under that plugin: register_plugin() is for code that is "
            f"not installed"), "load")
        return False
    try:
        manager.register(plugin, name=info.name)
    except pluggy.PluginValidationError as error:
        mismatch = PluginError(f"its hooks do not match mtmm's hook specification: {_one_line(error)}")
        mismatch.__cause__ = error
        _fail(info, mismatch, "load")
        return False
    unknown = sorted(
        caller.name
        for caller in manager.get_hookcallers(plugin) or []
        if not caller.has_spec()
        and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
    )
    if unknown:
        manager.unregister(plugin)
        _fail(info, PluginError(_unknown_hooks_message(unknown)), "load")
        return False
    return True


def _unknown_hooks_message(names: list[str]) -> str:
    valid = list(HOOK_OF_KIND.values())
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, valid, n=1)
        parts.append(f"unknown hook {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"{'; '.join(parts)}; valid hooks: {', '.join(valid)}"


def _make_register(info: PluginInfo, kind: str, collected: list[Component]) -> Callable[..., None]:
    def register(name: str, factory: Callable[..., Any], **metadata: Any) -> None:
        """Register ``factory`` as the {kind} ``name``."""
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            raise PluginError(f"plugin {info.name!r} registered an invalid {kind} name {name!r}: "
                              "use a non-empty string without ':' or surrounding spaces")
        if not callable(factory):
            raise PluginError(f"plugin {info.name!r} registered {kind} {name!r} with a factory that is not callable")
        description = metadata.pop("description", None) or first_docstring_line(factory)
        collected.append(Component(kind, name, factory, description, info.name, info.distribution, info.version, metadata))

    return register


def _collect_components(manager: pluggy.PluginManager, plugin: object, info: PluginInfo, registry: Registry) -> None:
    """Call each of ``plugin``'s hooks with a ``register`` that stamps its provenance."""
    collected: list[Component] = []
    try:
        for kind, hook_name in HOOK_OF_KIND.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    info.hooks.append(hook_name)
                    register = _make_register(info, kind, collected)
                    impl.function(**{arg: register for arg in impl.argnames})
    except PluginError:
        raise
    except Exception as error:  # a plugin's own bug: report it, keep the others
        manager.unregister(plugin)
        _fail(info, error, "register its components")
        return
    for component in collected:
        registry.add(component)
        info.components.append(f"{component.kind}:{component.name}")


def _load() -> _State:
    manager = pluggy.PluginManager("mtmm")
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    plugins: dict[str, PluginInfo] = {}
    loaded: list[tuple[object, PluginInfo]] = []

    for entry_point in _entry_points():
        dist = entry_point.dist
        info = PluginInfo(
            name=f"{dist.name if dist else 'unknown'}:{entry_point.name}",
            distribution=dist.name if dist else "unknown",
            version=dist.version if dist else "unknown",
            module=entry_point.value,
            status="loaded",
        )
        plugins[info.name] = info
        reason = _excluded_reason(info.distribution)
        if reason:
            info.status, info.error = "disabled", reason
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:
            _fail(info, error, "import")
            continue
        if _register_with_manager(manager, plugin, info):
            loaded.append((plugin, info))

    for name, plugin in _in_process.items():
        info = PluginInfo(name=name, distribution=IN_PROCESS, version="", module=getattr(plugin, "__name__", repr(plugin)),
                          status="loaded")
        plugins[name] = info
        if _register_with_manager(manager, plugin, info):
            loaded.append((plugin, info))

    loaded = _check_pending(manager, plugins, loaded)
    for plugin, info in loaded:
        _collect_components(manager, plugin, info, registry)
    _report_clashes(registry, plugins)
    return _State(registry, plugins, manager)


def _report_clashes(registry: Registry, plugins: dict[str, PluginInfo]) -> None:
    """Warn once per load about each name shared by several distributions, and record it on the plugins."""
    for clash in registry.clashes():
        components = [c for c in registry.components(clash.kind) if c.name == clash.name]
        third_party = [c for c in components if normalize_distribution(c.distribution) != BUILTIN_DISTRIBUTION]
        for component in third_party:
            info = plugins.get(component.plugin)
            if info is not None:
                info.clashes.append({
                    "kind": clash.kind,
                    "name": clash.name,
                    "distributions": list(clash.distributions),
                    "resolves_to": BUILTIN_DISTRIBUTION if clash.builtin else None,
                    "use": component.qualified_name,
                })
            if clash.builtin:
                source = f"{component.distribution} {component.version}".strip()
                warnings.warn(
                    f"{clash.kind} {clash.name!r} from {source} has the name of a built-in; "
                    f"{clash.name!r} stays the built-in, use {component.qualified_name!r} for this one",
                    ShadowingWarning, stacklevel=4)
        if not clash.builtin:
            options = ", ".join(repr(q) for q in clash.qualified_names())
            warnings.warn(
                f"{clash.kind} {clash.name!r} is registered by several distributions "
                f"({', '.join(clash.distributions)}); the plain name {clash.name!r} is ambiguous: "
                f"use a qualified name ({options}) or disable one with MTMM_DISABLE_PLUGINS",
                ShadowingWarning, stacklevel=4)


def _check_pending(manager: pluggy.PluginManager, plugins: dict[str, PluginInfo],
                   loaded: list[tuple[object, PluginInfo]]) -> list[tuple[object, PluginInfo]]:
    """A safety net behind :func:`_register_with_manager`: a plugin with a hook that has no spec
    (a misspelt hook name) is unregistered and reported like an import failure; the others stay."""
    while True:
        try:
            manager.check_pending()
            return loaded
        except pluggy.PluginValidationError as error:
            name = manager.get_name(error.plugin) or repr(error.plugin)
            info = plugins.get(name) or PluginInfo(name, "unknown", "", repr(error.plugin), "loaded")
            manager.unregister(error.plugin)
            loaded = [(plugin, i) for plugin, i in loaded if plugin is not error.plugin]
            valid = ", ".join(HOOK_OF_KIND.values())
            _fail(info, PluginError(f"{_one_line(error)}; valid hooks: {valid}"), "load")


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def state() -> _State:
    """The loaded plugins and registry; loads them on the first call."""
    global _state
    with _lock:
        if _state is None:
            _state = _load()
        return _state


def registry() -> Registry:
    """The registry of every loaded component."""
    return state().registry


def plugin_infos() -> list[PluginInfo]:
    """Every discovered plugin, loaded, failed or disabled."""
    return sorted(state().plugins.values(), key=lambda p: (p.distribution != BUILTIN_DISTRIBUTION, p.name))


def reset() -> None:
    """Forget what was loaded; the next lookup reads the entry points and environment again."""
    global _state
    with _lock:
        _state = None


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register an in-process plugin (a module or object with hook implementations), e.g. from a notebook."""
    name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
    with _lock:
        if name in _in_process:
            raise PluginError(f"an in-process plugin named {name!r} is already registered")
        _in_process[name] = plugin
        reset()
    return name


def unregister_plugin(name: str) -> None:
    """Remove an in-process plugin registered with :func:`register_plugin`."""
    with _lock:
        if _in_process.pop(name, None) is None:
            raise PluginError(f"no in-process plugin named {name!r}; registered: {sorted(_in_process)}")
        reset()
