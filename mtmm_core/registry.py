"""The component registry: every (kind, name) that a plugin registered, with its provenance."""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from mtmm_core.errors import AmbiguousComponentError, PluginError, UnknownComponentError

KINDS = ("encoder", "fusion", "head", "architecture", "weighting", "dataset", "metric", "loss")
PLURAL = {kind: "losses" if kind == "loss" else f"{kind}s" for kind in KINDS}
HOOK_OF_KIND = {kind: f"register_{PLURAL[kind]}" for kind in KINDS}
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
BUILTIN_DISTRIBUTION = "mtmm"


def normalize_kind(kind: str) -> str:
    """Map ``"encoders"`` or ``"Encoder"`` to ``"encoder"``; raise for an unknown kind."""
    cleaned = kind.strip().lower()
    singular = next((kind for kind, plural in PLURAL.items() if cleaned == plural), cleaned)
    if singular not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return singular


def normalize_distribution(name: str) -> str:
    """Canonical form of a distribution name (PEP 503): ``My_Plugin`` -> ``my-plugin``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Component:
    """One registered component and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    distribution: str
    version: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def qualified_name(self) -> str:
        """``distribution:name``, unique even when two distributions use the same name."""
        return f"{self.distribution}:{self.name}"


def first_docstring_line(obj: object) -> str:
    """The first non-empty line of ``obj``'s docstring, or an empty string."""
    doc = getattr(obj, "__doc__", None) or ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip().replace("``", "`")
    return ""


def is_builtin(component: Component) -> bool:
    """Whether ``component`` is one of mtmm's own (registered by the ``mtmm`` distribution)."""
    return normalize_distribution(component.distribution) == BUILTIN_DISTRIBUTION


@dataclass(frozen=True)
class Clash:
    """A (kind, name) registered by more than one distribution."""

    kind: str
    name: str
    distributions: tuple[str, ...]
    builtin: bool  # one of them is mtmm itself: the plain name stays the built-in

    def qualified_names(self) -> list[str]:
        return [f"{distribution}:{self.name}" for distribution in self.distributions]


class Registry:
    """Components by kind and name; a name may be registered by several distributions.

    A plain name registered by several distributions resolves to mtmm's built-in when one of them is
    mtmm (a plugin cannot silently replace a built-in); otherwise it is ambiguous and needs the
    qualified name ``distribution:name``.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], list[Component]] = {}

    def add(self, component: Component) -> None:
        """Add ``component``; the same distribution registering a (kind, name) twice is an error."""
        entries = self._entries.setdefault((component.kind, component.name), [])
        for existing in entries:
            if existing.distribution == component.distribution:
                raise PluginError(
                    f"{component.kind} {component.name!r} is registered twice by distribution "
                    f"{component.distribution!r} (plugins {existing.plugin!r} and {component.plugin!r}); "
                    "each name may be registered once per distribution"
                )
        entries.append(component)

    def remove_plugin(self, plugin: str) -> None:
        """Forget every component registered by ``plugin``."""
        for key in list(self._entries):
            kept = [c for c in self._entries[key] if c.plugin != plugin]
            if kept:
                self._entries[key] = kept
            else:
                del self._entries[key]

    def clashes(self) -> list[Clash]:
        """Every (kind, name) registered by more than one distribution."""
        found = []
        for (kind, name), entries in self._entries.items():
            if len(entries) > 1:  # the built-in first, then the others by name
                ordered = sorted(entries, key=lambda c: (not is_builtin(c), c.distribution))
                found.append(Clash(kind, name, tuple(c.distribution for c in ordered), is_builtin(ordered[0])))
        return sorted(found, key=lambda c: (KINDS.index(c.kind), c.name))

    def components(self, kind: str | None = None, pattern: str = "*") -> list[Component]:
        """Components of ``kind`` (all kinds if None) whose name matches the fnmatch ``pattern``."""
        kind = None if kind is None else normalize_kind(kind)
        found = [
            component
            for (entry_kind, name), entries in self._entries.items()
            if (kind is None or entry_kind == kind)
            and (fnmatch.fnmatchcase(name, pattern) or any(fnmatch.fnmatchcase(c.qualified_name, pattern) for c in entries))
            for component in entries
        ]
        return sorted(found, key=lambda c: (KINDS.index(c.kind), c.name, c.distribution))

    def resolve(self, kind: str, name: str) -> Component:
        """The component for ``name`` or ``distribution:name``; clear errors when unknown or ambiguous."""
        kind = normalize_kind(kind)
        distribution, _, plain = name.rpartition(":")
        entries = self._entries.get((kind, plain), [])
        if distribution:
            entries = [c for c in entries if normalize_distribution(c.distribution) == normalize_distribution(distribution)]
        if not entries:
            raise UnknownComponentError(self._unknown_message(kind, name))
        if len(entries) > 1 and not distribution:
            builtins = [c for c in entries if is_builtin(c)]
            if builtins:  # a plugin never replaces a built-in; its own is reached by its qualified name
                return builtins[0]
        if len(entries) > 1:
            names = " and ".join(repr(c.distribution) for c in entries)
            options = ", ".join(repr(c.qualified_name) for c in entries)
            raise AmbiguousComponentError(
                f"{kind} {plain!r} is registered by several distributions: {names}. "
                f"Select one by its qualified name ({options}), or disable the other distribution "
                "with MTMM_DISABLE_PLUGINS=<distribution>"
            )
        return entries[0]

    def _unknown_message(self, kind: str, name: str) -> str:
        known = sorted({n for (k, n) in self._entries if k == kind})
        plain = name.rpartition(":")[2]
        close = difflib.get_close_matches(plain, known, n=5, cutoff=0.5)
        message = f"unknown {kind} {name!r}"
        if close:
            message += f"; did you mean {', '.join(repr(c) for c in close)}?"
        if known:
            message += f" Known {PLURAL[kind]}: {', '.join(known)}"
        else:
            message += f" No {PLURAL[kind]} are registered (check `mtmm plugins`)"
        return message
