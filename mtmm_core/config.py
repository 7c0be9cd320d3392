"""Run configs: a YAML file with ``data``, ``model`` and ``train`` sections (and optional ``transfer`` and
``tune`` sections, see :mod:`mtmm_core.transfer` and :mod:`mtmm_core.tune`), plus ``--set key=value`` overrides.

``extends: NAME`` merges a config over another (a file beside it, or a shipped config by name):
mappings merge key by key, except that a mapping with a ``name`` (a component) replaces the
base entry whole, so a new fusion does not inherit the old one's parameters. Likewise
``--set model.fusion.name=gated`` drops the config's parameters of the fusion it replaces.

Every problem is a :class:`SpecError` naming the key (``train.lr: must be >= 0, got -1``);
:func:`read_run_config` reads a run folder's ``config.yaml`` with errors naming the file.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtmm_core.errors import SpecError, UsageError
from mtmm_core.transfer import transfer_settings

# The shipped configs: package data in an installed wheel (mtmm_core/configs), the repository's
# configs/ folder in a clone (an editable install maps the package there).
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = _PACKAGED_CONFIGS if _PACKAGED_CONFIGS.is_dir() else Path(__file__).resolve().parents[1] / "configs"
SECTIONS = ("data", "model", "train", "transfer", "tune")
MAX_SEED = 2**32 - 1  # NumPy's limit
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
VALID_DEVICES = "auto, cpu, cuda, cuda:N (a GPU index), mps"
# YAML 1.1 (PyYAML) reads 1e-3 as a string; these are numbers to anyone typing them
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigWarning(UserWarning):
    """A config value that is legal but probably not what was meant (``mtmm`` prints it as a warning)."""


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
    patience: int = 0  # epochs without improvement of the monitored metric before stopping; 0 = never stop early
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", "mps"
    eval_batch_size: int = 256
    progress: bool = True
    collective_timeout: float = 300.0  # seconds a collective may wait for another process before every rank stops
    threads: int = 0  # CPU threads of torch; 0 = OMP_NUM_THREADS if set, else this process's share of its cores
    log_every: int = 10  # steps between reads of the losses on the host (progress, finiteness check, stop vote)
    compile: bool = False  # torch.compile the forward pass and the losses of each training step
    strategy: str = "ddp"  # several processes: "ddp" (DistributedDataParallel) or "fsdp" (FSDP2 fully_shard)
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 elsewhere), "fp32", "bf16", "fp16" (CUDA)
    grad_accumulation: int = 1  # micro-batches per optimiser step; train.batch_size stays the step's global batch
    workers: int = 0  # processes loading training batches ahead (mtmm_core.loader); 0 = in the training process
    prefetch: int = 2  # batches each loader worker loads ahead (with workers > 0)


# The ranges train_settings() enforces (README.md, "Train"): key -> (lowest, highest, note); None = unbounded.
TRAIN_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "epochs": (1, None, ""),
    "batch_size": (1, None, ""),
    "eval_batch_size": (1, None, ""),
    "lr": (0, None, ""),
    "weight_decay": (0, None, ""),
    "grad_clip": (0, None, " (0 turns clipping off)"),
    "seed": (0, MAX_SEED, ""),
    "patience": (0, None, " (0 never stops early)"),
    "collective_timeout": (1, None, " (seconds)"),
    "threads": (0, None, " (0 chooses from the cores this process may use)"),
    "log_every": (1, None, " (steps)"),
    "workers": (0, None, " (loader processes; 0 loads batches in the training process)"),
    "prefetch": (1, None, " (batches each loader worker loads ahead)"),
    "grad_accumulation": (1, None, " (micro-batches per optimiser step)"),
}
#: The named choices train_settings() enforces: key -> valid values (docs/distributed.md).
TRAIN_CHOICES: dict[str, tuple[str, ...]] = {
    "strategy": ("ddp", "fsdp"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}


def default_config() -> dict[str, Any]:
    """The config ``mtmm train`` uses when given none: ``configs/default.yaml``."""
    return load_config(CONFIG_DIR / "default.yaml")


def load_config(path: str | Path | Mapping[str, Any] | None = None,
                overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a config (default: ``configs/default.yaml``; a shipped config by name; or a mapping, which may
    ``extends:`` a shipped config or a file), apply ``key=value`` overrides and validate it."""
    if isinstance(path, Mapping):
        return _apply_overrides(_with_extends(copy.deepcopy(dict(path)), Path.cwd(), "the config", seen=()),
                                overrides)
    path = Path(path) if path is not None else CONFIG_DIR / "default.yaml"
    if not path.is_file() and (CONFIG_DIR / f"{path}.yaml").is_file():
        path = CONFIG_DIR / f"{path}.yaml"  # a shipped config by name: `mtmm train gated`
    if not path.is_file():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise SpecError("", f"config {str(path)!r} not found; shipped configs: {', '.join(shipped)}")
    return _apply_overrides(_read_with_extends(path, seen=()), overrides)


def _apply_overrides(config: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    overridden: set[str] = set()
    for override in overrides or []:
        _forget_parameters_on_rename(config, override, overridden)
        apply_override(config, override)
        overridden.add(override.partition("=")[0].strip())
    return validate_config(config)


def _forget_parameters_on_rename(config: dict[str, Any], override: str, overridden: set[str]) -> None:
    """``--set model.fusion.name=gated`` picks a new component: like ``extends``, it does not inherit
    the old component's parameters from the config (those set by earlier overrides stay)."""
    key, _, raw = override.partition("=")
    parts = key.strip().split(".")
    if len(parts) < 3 or parts[0] != "model" or parts[-1] != "name" or not all(parts):
        return
    node: Any = config
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or "name" not in node or node["name"] == parse_override_value(raw, key):
        return
    prefix = ".".join(parts[:-1])
    kept = {k: v for k, v in node.items() if f"{prefix}.{k}" in overridden}
    node.clear()
    node.update(kept)


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Read ``path``; an ``extends: NAME`` key merges it over that config (a shipped name or a path)."""
    if path.resolve() in seen:
        raise SpecError("extends", f"configs extend each other in a cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SpecError("", f"{path} is not valid YAML: {yaml_problem(error)}") from error
    if not isinstance(config, dict):
        raise SpecError("", f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
    return _with_extends(config, path.parent, str(path), seen + (path.resolve(),))


def _with_extends(config: dict[str, Any], folder: Path, name: str, seen: tuple[Path, ...]) -> dict[str, Any]:
    """``config`` merged over the config its ``extends`` key names (a file in ``folder`` or a shipped name)."""
    base = config.pop("extends", None)
    if base is None:
        return config
    base_path = folder / base if (folder / base).is_file() else CONFIG_DIR / f"{base}.yaml"
    if not base_path.is_file():
        raise SpecError("extends", f"{name} extends {base!r}, which is neither a file beside it nor a shipped config")
    return _deep_merge(_read_with_extends(base_path, seen), config)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and "name" not in value:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's own message spans several lines)."""
    problem = getattr(error, "problem", None) or getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)


def yaml_number(value: Any) -> Any:
    """``value``, with a string such as ``1e-3`` (which YAML 1.1 reads as text) turned into a float."""
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    return value


def parse_override_value(raw: str, key: str = "") -> Any:
    """The value of ``--set key=VALUE`` read as YAML (``3``, ``0.1``, ``1e-3``, ``[a, b]``, ``true``, ``{name: x}``)."""
    if not raw.strip():
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise SpecError("", f"--set {key}={raw}: the value is not valid YAML: {yaml_problem(error)}. "
                        "Quote it to pass a string, e.g. --set 'key=\"text\"'; YAML tags (!!) are not allowed"
                        ) from error
    return yaml_number(value)


def apply_override(config: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in ``config``; the value is parsed as YAML (``3``, ``0.1``, ``[a, b]``, ``true``)."""
    key, separator, raw = override.partition("=")
    key = key.strip()
    if not separator or not key:
        raise SpecError(override, "an override must look like key.path=value, e.g. train.epochs=3")
    parts = key.split(".")
    if not all(parts):
        raise SpecError("", f"--set {override}: the key has an empty part; write it like train.epochs=3")
    *parents, leaf = parts
    node = config
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(".".join(parents[: depth + 1]),
                            f"holds {type(child).__name__} {child!r}, not a mapping; cannot set {key} inside it")
        node = child
    node[leaf] = parse_override_value(raw, key)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check the sections and the ``train`` settings; errors name the key. Returns a normalised copy."""
    if not isinstance(config, dict):
        raise SpecError("", f"a config must be a mapping with sections {', '.join(SECTIONS)}, "
                        f"got {type(config).__name__}")
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
    from mtmm_core.spec import check_spec_values

    check_spec_values(config["model"], prefix="model.")
    tasks = config["model"].get("tasks")
    if tasks is not None and not isinstance(tasks, dict):
        raise SpecError("model.tasks", f"expected a mapping of task names to heads, got {type(tasks).__name__} "
                        f"{tasks!r}; leave it out to take the tasks from the data set")
    settings = train_settings(config.get("train") or {})
    _check_monitored_task(settings.monitor, tasks)
    config["train"] = asdict(settings)
    if "transfer" in config:  # optional: runs without it keep configs of three sections
        config["transfer"] = asdict(transfer_settings(config["transfer"]))
    if "tune" in config:  # optional: mtmm tune's search (docs/tune.md); checked against the rest of the config
        from mtmm_core.tune import tune_settings

        config["tune"] = tune_settings(config["tune"], config)
    return config


def train_settings(section: dict[str, Any]) -> TrainSettings:
    """The ``train`` section as :class:`TrainSettings`; an unknown key, a wrong type or a value out of
    range (:data:`TRAIN_RANGES`, non-finite numbers, an unknown or unavailable ``device``) names ``train.<key>``.

    A legal but surprising value (``lr`` 0 or above 1) gives a :class:`ConfigWarning`.
    """
    if not isinstance(section, dict):
        raise SpecError("train", f"expected a mapping, got {type(section).__name__}")
    section = dict(section)
    known = {f.name: f for f in fields(TrainSettings)}
    for key, value in section.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"train.{key}", f"unknown setting{hint} Valid settings: {', '.join(known)}")
        expected = type(getattr(TrainSettings(), key))
        if expected is float:
            value = section[key] = yaml_number(value)  # `lr: 1e-3` in a YAML file is a string to PyYAML
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else isinstance(value, expected)
        if expected is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise SpecError(f"train.{key}", f"expected {expected.__name__}, got {type(value).__name__} {value!r}")
    settings = TrainSettings(**section)
    for key, (lowest, highest, note) in TRAIN_RANGES.items():
        value = getattr(settings, key)
        if not math.isfinite(value):
            raise SpecError(f"train.{key}",
                            f"must be a finite number {_range_text(lowest, highest, note)}, got {value}")
        if (lowest is not None and value < lowest) or (highest is not None and value > highest):
            raise SpecError(f"train.{key}", f"must be {_range_text(lowest, highest, note)}, got {value}")
    if not 0 <= settings.warmup_fraction < 1:
        raise SpecError("train.warmup_fraction", f"must be in [0, 1), got {settings.warmup_fraction}")
    if settings.lr == 0:
        warnings.warn("train.lr is 0: the weights will not change", ConfigWarning, stacklevel=2)
    elif settings.lr > 1:
        warnings.warn(f"train.lr {settings.lr} is unusually large for AdamW (typical: 1e-4 to 1e-2); "
                      "the loss will likely diverge", ConfigWarning, stacklevel=2)
    for key, choices in TRAIN_CHOICES.items():
        value = getattr(settings, key)
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"train.{key}", f"unknown value {value!r}{hint}; valid: {', '.join(choices)}")
    _check_monitor(settings.monitor)
    check_device(settings.device)
    if settings.precision == "fp16" and settings.device.partition(":")[0] in ("cpu", "mps", "xpu"):
        raise SpecError("train.precision", f"'fp16' needs a CUDA GPU, and train.device is {settings.device!r}: "
                        "float16 autocast with loss scaling is a GPU technique. Use 'bf16' (bfloat16 autocast, "
                        "no loss scaling, works on the CPU) or 'fp32'")
    if settings.grad_accumulation > settings.batch_size:
        raise SpecError("train.grad_accumulation", f"{settings.grad_accumulation} micro-batches cannot be cut "
                        f"from a batch of train.batch_size {settings.batch_size}; use at most that many")
    return settings


def _range_text(lowest: float | None, highest: float | None, note: str) -> str:
    """``in [a, b]``, ``>= a`` or ``<= b``, plus ``note``."""
    if lowest is not None and highest is not None:
        return f"in [{lowest}, {highest}]{note}"
    return (f">= {lowest}" if lowest is not None else f"<= {highest}") + note


def _check_monitor(monitor: str) -> None:
    task, dot, metric = monitor.rpartition(".")
    if monitor != "loss" and not (dot and task and metric):
        raise SpecError("train.monitor", f"expected 'loss' or '<task>.<metric>' such as 'match.accuracy', "
                        f"got {monitor!r}")


def _check_monitored_task(monitor: str, tasks: dict[str, Any] | None) -> None:
    """When the config names its tasks, ``train.monitor``'s task must be one of them (checked before training)."""
    task = monitor.rpartition(".")[0]
    if monitor == "loss" or tasks is None or task in tasks:
        return
    close = difflib.get_close_matches(task, [str(t) for t in tasks], n=1)
    hint = f" (did you mean {close[0] + '.' + monitor.rpartition('.')[2]!r}?)" if close else ""
    raise SpecError("train.monitor", f"{monitor!r} names no task of model.tasks{hint}; valid: 'loss' or "
                    f"'<task>.<metric>' with a task among {', '.join(map(str, tasks))}")


def check_device(name: str) -> None:
    """``train.device``: ``auto``, or a device type torch has and this machine offers; else a SpecError."""
    if name == "auto":
        return
    kind, colon, index = name.partition(":")
    if kind not in DEVICE_TYPES or (colon and not index.isdigit()):
        guess = "cuda" if kind.lower() in ("gpu", "nvidia", "cuda") else None
        close = [guess] if guess else difflib.get_close_matches(kind, ("auto",) + DEVICE_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError("train.device", f"unknown device {name!r}{hint}; valid: {VALID_DEVICES}")
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible on this machine")
            raise SpecError("train.device", f"{name!r}, but CUDA is not available ({why}, torch {torch.__version__}); "
                            "use auto or cpu")
        count = torch.cuda.device_count()
        if colon and int(index) >= count:
            raise SpecError("train.device", f"{name!r}, but this machine has {count} CUDA GPU"
                            f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); use auto, cuda or one of those")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise SpecError("train.device", f"{name!r}, but MPS (Apple GPU) is not available here; use auto or cpu")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise SpecError("train.device", f"{name!r}, but no Intel XPU is available here; use auto or cpu")


def check_output_file(out: str | Path, flag: str = "--out", example: str = "out.npz") -> Path:
    """``out`` as a file to write: not a folder, and no file where a folder on its path should be
    (missing folders are made when writing). Problems are UsageErrors naming ``flag``."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{flag} {out} is a folder; give a file path, e.g. {out / example}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {out}: {parent} is a file, so it cannot hold {out.name}")
            break
    return out


# -- run folders --------------------------------------------------------------------------------------
def _run_file(run_dir: str | Path, name: str) -> Path:
    """``run_dir / name``, after checking that ``run_dir`` is a folder holding that file (UsageError otherwise)."""
    run = Path(run_dir)
    if not run.exists():
        raise UsageError(f"{run}: no such run folder")
    if not run.is_dir():
        raise UsageError(f"{run} is a file, not a run folder")
    path = run / name
    if not path.is_file():
        raise UsageError(f"{path} does not exist: {run} is not an mtmm run folder (a run folder holds "
                         "config.yaml, model.yaml, metrics.jsonl and last.pt, written by `mtmm train`)")
    return path


def _read_run_mapping(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not valid YAML: {yaml_problem(error)}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} cannot be read: {getattr(error, 'strerror', None) or error}") from error
    if value is None:
        raise UsageError(f"{path} is empty; it should hold what `mtmm train` wrote there")
    if not isinstance(value, dict):
        raise UsageError(f"{path} must hold a mapping, got {type(value).__name__}")
    return value


def read_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The validated ``config.yaml`` of a run folder (for evaluate, resume), with ``key=value``
    ``overrides`` applied before validation (e.g. ``train.device=cpu`` for a run trained on a GPU).

    Every error is a UsageError or SpecError naming the file (a missing folder or file, empty or
    invalid YAML, a bad value in it) or the override (a bad value set by one).
    """
    path = _run_file(run_dir, "config.yaml")
    config = _read_run_mapping(path)
    overridden = set()
    for override in overrides or []:
        apply_override(config, override)
        overridden.add(override.partition("=")[0].strip())
    try:
        return validate_config(config)
    except SpecError as error:
        if error.path in overridden:
            raise
        raise SpecError(str(path), str(error)) from error


def read_run_model_spec(run_dir: str | Path) -> dict[str, Any]:
    """The ``model.yaml`` (the completed model spec) of a run folder, as a mapping; errors name the file.

    Errors from building the model from it are the caller's to prefix (:func:`mtmm_core.predict.load_trained_model`).
    """
    return _read_run_mapping(_run_file(run_dir, "model.yaml"))
