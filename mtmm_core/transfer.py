"""Knowledge transfer between runs: start from another run's weights, freeze modules and unfreeze them later.

A config's optional ``transfer`` section::

    transfer:
      init_from: runs/pretrain        # a run folder: its best.pt (else last.pt) initialises this model
      init_prefixes: [encoders.image]  # optional: only tensors under these module prefixes (default: all)
      freeze: [encoders.image]         # optional: these parameters are not trained ...
      unfreeze_at_epoch: 3             # ... until this epoch (1-based); default: never
      layer_decay: 0.75                # optional: layer-wise learning rates in pretrained backbones

``layer_decay`` (in (0, 1]) scales the learning rate of each parameter of a module that reports its
layers (``layer_depths()``, as the ``timm`` and ``hf`` encoders do) by ``decay ** (K + 1 - group)``, its
layer group counted from 0 at the input to ``K`` at the top; every other parameter (projections,
fusion, heads: the new layers) keeps the full rate. :func:`parameter_groups` gives the optimiser's groups.

A prefix matches a tensor name that equals it or continues it after a dot: ``encoders.image``
matches ``encoders.image.conv.0.weight``, not ``encoders.image2.weight``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mtmm_core.checkpoint import load_checkpoint
from mtmm_core.errors import SpecError


@dataclass
class TransferSettings:
    """The ``transfer`` section of a config; see this module's docstring."""

    init_from: str | None = None
    init_prefixes: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)
    unfreeze_at_epoch: int | None = None
    layer_decay: float | None = None


def transfer_settings(section: Any) -> TransferSettings:
    """The ``transfer`` section as :class:`TransferSettings`; a wrong key or value names ``transfer.<key>``."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise SpecError("transfer", f"expected a mapping, got {type(section).__name__}")
    known = [f.name for f in fields(TransferSettings)]
    for key, value in section.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"transfer.{key}", f"unknown setting{hint} Valid settings: {', '.join(known)}")
    settings = TransferSettings(**section)
    if settings.init_from is not None and (not isinstance(settings.init_from, str) or not settings.init_from):
        raise SpecError("transfer.init_from", f"expected a run folder (str), got {settings.init_from!r}")
    for key in ("init_prefixes", "freeze"):
        value = getattr(settings, key)
        if isinstance(value, str):  # `--set transfer.freeze=encoders.image` means one prefix
            value = [value]
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise SpecError(f"transfer.{key}", f"expected a list of module prefixes, got {value!r}")
        setattr(settings, key, list(value))
    if settings.init_prefixes and not settings.init_from:
        raise SpecError("transfer.init_prefixes", "has no effect without transfer.init_from")
    epoch = settings.unfreeze_at_epoch
    if epoch is not None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise SpecError("transfer.unfreeze_at_epoch", f"expected an epoch number >= 1, got {epoch!r}")
        if not settings.freeze:
            raise SpecError("transfer.unfreeze_at_epoch", "has no effect without transfer.freeze")
    decay = settings.layer_decay
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float))
                              or not math.isfinite(decay) or not 0 < decay <= 1):
        raise SpecError("transfer.layer_decay", f"expected a number in (0, 1] (e.g. 0.75), got {decay!r}")
    return settings


def matches(name: str, prefixes: Sequence[str]) -> bool:
    """Whether the tensor ``name`` lies under one of ``prefixes`` (every name does when there are none)."""
    return not prefixes or any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def checkpoint_of(run_dir: str | Path) -> Path:
    """A run folder's ``best.pt``, else its ``last.pt``."""
    run_dir = Path(run_dir)
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    if not run_dir.is_dir():
        raise FileNotFoundError(f"init_from: no run folder at {run_dir}")
    raise FileNotFoundError(f"init_from: {run_dir} holds no best.pt or last.pt to initialise from")


@dataclass
class TransferReport:
    """What :func:`load_weights` did: the tensors loaded, those skipped (with why), and those left fresh."""

    source: Path
    prefixes: list[str]
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    fresh: list[str] = field(default_factory=list)  # this model's tensors under the prefixes the checkpoint lacks
    unmatched_prefixes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        groups: dict[str, int] = {}
        for name in self.loaded:
            groups[_module_of(name)] = groups.get(_module_of(name), 0) + 1
        where = f" under {', '.join(self.prefixes)}" if self.prefixes else ""
        by_module = f" ({', '.join(f'{module} {count}' for module, count in groups.items())})"
        shown = groups and (not self.prefixes or len(groups) > 1)  # not just the one prefix again
        lines = [f"init_from {self.source}: loaded {len(self.loaded)} tensors{where}" + (by_module if shown else "")]
        for prefix in self.unmatched_prefixes:
            lines.append(f"  prefix {prefix!r} matches no tensor of the checkpoint")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {name}: {reason}" for name, reason in self.skipped]
        if self.fresh:
            lines.append(f"not in the checkpoint, left as initialised: {len(self.fresh)}:")
            lines += [f"  {name}" for name in self.fresh]
        return "\n".join(lines)


def _module_of(name: str) -> str:
    """``encoders.image`` / ``heads.digit`` for tensors of an encoder or head, else the top-level module."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("encoders", "heads") and len(parts) > 2 else parts[0]


def load_weights(model: nn.Module, run_dir: str | Path, prefixes: Sequence[str] = ()) -> TransferReport:
    """Copy the tensors under ``prefixes`` (all by default) from ``run_dir``'s checkpoint into ``model``.

    A tensor the model lacks, or whose shape differs, is skipped and the model's own is left
    untouched; the report says which and why. Raises ValueError, naming the run and the
    prefixes, when nothing at all is loaded.
    """
    path = checkpoint_of(run_dir)
    source = load_checkpoint(path)["model"]
    target = model.state_dict()
    report = TransferReport(path, list(prefixes))
    report.unmatched_prefixes = [p for p in prefixes if not any(matches(name, [p]) for name in source)]
    with torch.no_grad():
        for name, tensor in source.items():
            if not matches(name, prefixes):
                continue
            if name not in target:
                report.skipped.append((name, "missing in this model"))
            elif tensor.shape != target[name].shape:
                report.skipped.append((name, f"shape {list(tensor.shape)} in the checkpoint vs "
                                             f"{list(target[name].shape)} in this model"))
            else:
                target[name].copy_(tensor)
                report.loaded.append(name)
    report.fresh = [name for name in target if matches(name, prefixes) and name not in source]
    if not report.loaded:
        under = f"under the prefixes {', '.join(prefixes)}" if prefixes else "at all"
        raise ValueError(f"init_from {run_dir}: nothing to load {under} from {path}; refusing to start a run "
                         f"that transfers nothing.\n{report}")
    return report


def freeze(model: nn.Module, prefixes: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """Stop training the parameters under ``prefixes`` (``requires_grad = False``); returns them by name.

    A prefix that matches no parameter is a ValueError naming it.
    """
    if not prefixes:
        return []
    named = list(model.named_parameters())
    for prefix in prefixes:
        if not any(matches(name, [prefix]) for name, _ in named):
            modules = sorted({_module_of(name) for name, _ in named})
            raise ValueError(f"transfer.freeze: {prefix!r} matches no parameter of this model; its modules: "
                             f"{', '.join(modules)}")
    frozen = [(name, parameter) for name, parameter in named if matches(name, prefixes)]
    for _, parameter in frozen:
        parameter.requires_grad_(False)
    return frozen


def numbered_layer_depths(names: Sequence[str]) -> dict[str, int]:
    """Layer groups ``{name: group}`` from parameter names in registration order: a name with
    ``layer.3.`` (also ``layers``, ``block``, ``blocks``, ``h``, ``stages``) is in group 4; the names
    before the first numbered layer (embeddings) in group 0, those after the last (final norm, pooler)
    in group ``N + 1`` for ``N`` numbered layers."""
    numbered = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks|h|stages)\.(\d+)\.")
    found = [numbered.search(name) for name in names]
    last = max([int(match.group(1)) for match in found if match], default=-1)
    depths, seen_layer = {}, False
    for name, match in zip(names, found):
        if match:
            seen_layer = True
            depths[name] = int(match.group(1)) + 1
        else:
            depths[name] = last + 2 if seen_layer else 0
    return depths


def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """``{parameter name: learning-rate scale}`` for the parameters of the modules of ``model`` that report
    ``layer_depths()`` (the outermost such module wins): ``decay ** (K + 1 - group)`` with ``K`` that module's
    top group. Parameters of other modules are not listed (scale 1)."""
    scales: dict[str, float] = {}
    claimed: list[str] = []
    for prefix, module in model.named_modules():
        reporter = getattr(module, "layer_depths", None)
        if not callable(reporter) or any(matches(prefix, [outer]) for outer in claimed):
            continue
        claimed.append(prefix)
        depths = reporter()
        top = max(depths.values(), default=0)
        for name, group in depths.items():
            scales[f"{prefix}.{name}" if prefix else name] = decay ** (top + 1 - group)
    return scales


def parameter_groups(model: nn.Module, settings: TransferSettings, lr: float) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: without ``layer_decay`` one group ``{"params"}`` of every parameter
    (the optimiser's own ``lr``); with it one group per learning-rate scale (:func:`layer_scales`),
    ``{"params", "lr": lr * scale, "lr_scale": scale}``, the full-rate group first (the rate a trainer logs
    from group 0). Frozen parameters are included (they get no gradient until unfrozen). A ``layer_decay``
    on a model with no module reporting layers is a :class:`SpecError`.

    Use: ``torch.optim.AdamW(parameter_groups(model, settings, lr), lr=lr, weight_decay=...)``."""
    named = list(model.named_parameters())
    if settings.layer_decay is None:
        return [{"params": [parameter for _, parameter in named]}]
    scales = layer_scales(model, float(settings.layer_decay))
    if not scales:
        raise SpecError("transfer.layer_decay", "no module of this model reports its layers (layer_depths()); "
                        "the timm and hf encoders do")
    unknown = sorted(set(scales) - {name for name, _ in named})
    if unknown:
        raise ValueError(f"layer_depths() names parameters the model does not have: {', '.join(unknown[:5])}")
    by_scale: dict[float, dict[str, Any]] = {}
    for name, parameter in named:
        scale = scales.get(name, 1.0)
        group = by_scale.setdefault(scale, {"params": [], "lr": lr * scale, "lr_scale": scale})
        group["params"].append(parameter)
    return [by_scale[scale] for scale in sorted(by_scale, reverse=True)]
