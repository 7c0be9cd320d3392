"""Run configs: a YAML file with ``data``, ``model`` and ``train`` sections (and an optional ``transfer``
section, see :mod:`mtmm_core.transfer`), plus ``--set key=value`` overrides.

``extends: NAME`` merges a config over another (a file beside it, or a shipped config by name):
mappings merge key by key, except that a mapping with a ``name`` (a component) replaces the
base entry whole, so a new fusion does not inherit the old one's parameters.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mtmm_core.errors import SpecError
from mtmm_core.transfer import transfer_settings

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SECTIONS = ("data", "model", "train", "transfer")


@dataclass
class TrainSettings:
    """The ``train`` section: optimisation, checkpointing and early stopping."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    monitor: str = "loss"  # "loss" (sum of validation task losses) or "<task>.<metric>", e.g. "match.accuracy"
    patience: int = 5  # epochs without improvement of the monitored metric before stopping; 0 = never stop early
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    eval_batch_size: int = 256
    progress: bool = True


def default_config() -> dict[str, Any]:
    """The config ``mtmm train`` uses when given none: ``configs/default.yaml``."""
    return load_config(CONFIG_DIR / "default.yaml")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a config (default: ``configs/default.yaml``), apply ``key=value`` overrides and validate it."""
    path = Path(path) if path is not None else CONFIG_DIR / "default.yaml"
    if not path.is_file() and (CONFIG_DIR / f"{path}.yaml").is_file():
        path = CONFIG_DIR / f"{path}.yaml"  # a shipped config by name: `mtmm train gated`
    if not path.is_file():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise SpecError("", f"config {str(path)!r} not found; shipped configs: {', '.join(shipped)}")
    config = _read_with_extends(path, seen=())
    for override in overrides or []:
        apply_override(config, override)
    return validate_config(config)


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Read ``path``; an ``extends: NAME`` key merges it over that config (a shipped name or a path)."""
    if path.resolve() in seen:
        raise SpecError("extends", f"configs extend each other in a cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SpecError("", f"{path} is not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise SpecError("", f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
    base = config.pop("extends", None)
    if base is None:
        return config
    base_path = path.parent / base if (path.parent / base).is_file() else CONFIG_DIR / f"{base}.yaml"
    if not base_path.is_file():
        raise SpecError("extends", f"{path} extends {base!r}, which is neither a file beside it nor a shipped config")
    return _deep_merge(_read_with_extends(base_path, seen + (path.resolve(),)), config)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and "name" not in value:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_override(config: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in ``config``; the value is parsed as YAML (``3``, ``0.1``, ``[a, b]``, ``true``)."""
    key, separator, raw = override.partition("=")
    if not separator or not key.strip():
        raise SpecError(override, "an override must look like key.path=value, e.g. train.epochs=3")
    *parents, leaf = key.strip().split(".")
    node = config
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(".".join(parents[: depth + 1]), f"is a {type(child).__name__}, cannot set {key} inside it")
        node = child
    node[leaf] = yaml.safe_load(raw) if raw.strip() else ""


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check the sections and the ``train`` settings; errors name the key. Returns a normalised copy."""
    config = copy.deepcopy(config)
    for key in config:
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key), SECTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(str(key), f"unknown section{hint} Valid sections: {', '.join(SECTIONS)}")
    data = config.setdefault("data", {"name": "avdigits"})
    if isinstance(data, str):
        data = config["data"] = {"name": data}
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise SpecError("data.name", "name the data set (e.g. avdigits) or give a path to a data folder")
    if not isinstance(config.get("model"), dict):
        raise SpecError("model", "missing: the model spec (encoders, fusion, tasks, ...)")
    config["train"] = asdict(train_settings(config.get("train") or {}))
    if "transfer" in config:  # optional: runs without it keep configs of three sections
        config["transfer"] = asdict(transfer_settings(config["transfer"]))
    return config


def train_settings(section: dict[str, Any]) -> TrainSettings:
    """The ``train`` section as :class:`TrainSettings`; an unknown key or wrong type names ``train.<key>``."""
    if not isinstance(section, dict):
        raise SpecError("train", f"expected a mapping, got {type(section).__name__}")
    known = {f.name: f for f in fields(TrainSettings)}
    for key, value in section.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"train.{key}", f"unknown setting{hint} Valid settings: {', '.join(known)}")
        expected = type(getattr(TrainSettings(), key))
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else isinstance(value, expected)
        if expected is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise SpecError(f"train.{key}", f"expected {expected.__name__}, got {type(value).__name__} {value!r}")
    settings = TrainSettings(**section)
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(settings, key) < 1:
            raise SpecError(f"train.{key}", f"must be at least 1, got {getattr(settings, key)}")
    if not 0 <= settings.warmup_fraction < 1:
        raise SpecError("train.warmup_fraction", f"must be in [0, 1), got {settings.warmup_fraction}")
    return settings
