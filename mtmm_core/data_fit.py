"""The data against a model: does a config's model fit a data set (see docs/data.md, ``--config``)?

``check_against_config(path, config)`` lists the problems of a data folder and, when it has
none, those of training the config's model on it; ``check_model_fit(model_spec, dataset)`` is
that comparison for a data set already loaded, and ``require_model_fit`` raises on the first
problems, for the trainer. Per modality the encoder's expected input (rank, channels, features,
image size, ``max_len``) is compared with the data; per task the head's kind and size.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtmm_core.datacheck import CHUNK_BYTES, Problem, _close, check_dataset

BUILTIN = "mtmm"  # the distribution of the built-in components, whose inputs are known below
ENCODER_INPUTS = {  # built-in encoder -> (what one sample must be, the rank of its shape)
    "cnn": ("images [C, H, W]", 3),
    "patch_transformer": ("square images [C, S, S]", 3),
    "sequence_transformer": ("frames [T, F]", 2),
    "tabular": ("numeric features [F]", 1),
}
HEAD_TASK_KINDS = {"classification": "classification", "binary": "binary", "regression": "regression"}
HEAD_SIZES = {"binary": "num_labels", "regression": "out_features"}  # head parameter: K of [N, K] labels


@dataclass
class _Part:
    """An encoder or head of a model spec: its path in the config, the component, the parameters
    the config gives and those it will be built with (the factory's defaults filled in)."""

    path: str
    component: Any
    given: dict
    params: dict

    def said(self, key: str) -> str:
        return f"{self.params.get(key)!r}" + ("" if key in self.given else " (the default)")

    def number(self, key: str) -> int | None:
        value = self.params.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def builtin(self) -> str | None:
        return self.component.name if self.component.distribution == BUILTIN else None


#: Encoder parameters that the data fixes when a config leaves them out (mtmm_core.data.infer_encoders).
DATA_SIZES = frozenset({"in_channels", "in_features", "num_numeric", "categories", "image_size", "max_len",
                        "vocab_size"})


def _model_parts(model: Any, data_sizes: bool = False) -> tuple[dict[str, _Part], dict[str, _Part] | None]:
    """The encoders and (None when left out) the task heads of a config's ``model`` section.
    A section that cannot be read (unknown component, unknown or mistyped parameter) raises SpecError;
    with ``data_sizes``, an encoder may leave out the parameters the data will fix (``DATA_SIZES``)."""
    from mtmm_core.components import WIRING_ARGUMENTS, check_arguments, get_component
    from mtmm_core.errors import AmbiguousComponentError, SpecError, UnknownComponentError

    def part(kind: str, entry: Any, path: str, key: str) -> _Part:
        if isinstance(entry, str):
            name, given = entry, {}
        elif isinstance(entry, dict) and isinstance(entry.get(key), str):
            name, given = entry[key], {k: v for k, v in entry.items() if k != key}
        else:
            raise SpecError(path, f"expected a mapping with {key!r} (the {kind}'s name), got {entry!r}")
        try:
            component = get_component(kind, name)
        except (UnknownComponentError, AmbiguousComponentError) as error:
            raise SpecError(f"{path}.{key}", str(error)) from error
        supplied = frozenset(WIRING_ARGUMENTS) | {"dim"} | (DATA_SIZES if data_sizes and kind == "encoder" else set())
        check_arguments(component, given, path, supplied=supplied)
        params = {n: p.default for n, p in inspect.signature(component.factory).parameters.items()
                  if p.default is not p.empty}
        return _Part(path, component, given, {**params, **given})

    if not isinstance(model, dict):
        raise SpecError("model", f"expected a mapping with encoders, fusion (and tasks), got {model!r}")
    encoders = model.get("encoders")
    if not isinstance(encoders, dict) or not encoders:
        raise SpecError("model.encoders", "expected a mapping of modality names to encoders, e.g. {image: {name: cnn}}")
    parts = {str(m): part("encoder", e, f"model.encoders.{m}", "name") for m, e in encoders.items()}
    tasks = model.get("tasks")
    if tasks is None:
        return parts, None
    if not isinstance(tasks, dict) or not tasks:
        raise SpecError("model.tasks", "expected a mapping of task names to heads, e.g. {digit: {head: classification, "
                                       "num_classes: 10}}, or leave it out to take the tasks from the data")
    return parts, {str(t): part("head", e, f"model.tasks.{t}", "head") for t, e in tasks.items()}


def _suggestion(shape: list) -> str:
    if len(shape) == 2:
        return f"sequence_transformer with in_features: {shape[-1]}"
    if len(shape) == 3 and shape[0] is not None:
        return f"cnn or patch_transformer with in_channels: {shape[0]}"
    if len(shape) == 1 and shape[0] is not None:
        return f"tabular with num_numeric: {shape[0]}"
    return "an encoder (mtmm list encoders) that takes samples of this shape"


def check_model_fit(model: Any, dataset: Any, *, source: str = "config") -> list[Problem]:
    """The problems of training the model of a config's ``model`` section on ``dataset`` (a
    :class:`~mtmm_core.userdata.FolderDataset` or a registered data set), as Problems with
    ``file=source`` and ``field`` the config key to change; empty when it fits.

    Compared: the modalities with the encoders (one each, no encoder without data); per
    encoder the sizes the config fixes (or the factory's defaults) against the data's sample
    shape: ``in_channels`` (first axis), ``in_features`` (last axis), ``num_numeric``,
    ``image_size``, the stages of ``cnn``, and ``max_len`` against the longest sequence (known
    for a data folder); per task the head against the task kind, ``num_classes``, and
    ``num_labels`` / ``out_features`` against K of ``[N, K]`` labels. Tasks left out of the
    model come from the data (``complete_model_spec``) and fit, except ``[N, K]`` labels with K > 1.
    A model section that cannot be read raises SpecError.
    """
    encoders, heads = _model_parts(model)
    problems: list[Problem] = []

    def add(field: str, message: str, row: int | None = None) -> None:
        problems.append(Problem(source, field, row, message))

    folder = callable(getattr(dataset, "sequence_stats", None))  # a data folder: float32 arrays, lengths known
    stats = dataset.sequence_stats() if folder else {}
    modalities = dict(dataset.modalities)
    for modality, info in modalities.items():
        if modality not in encoders:
            add("model.encoders", f"has no encoder for the data's modality {modality!r}; every modality of the data "
                                  f"needs one: add model.encoders.{modality}, e.g. "
                                  f"{_suggestion(list(info.get('shape') or []))}")
    for modality, part in encoders.items():
        if modality not in modalities:
            add(part.path, f"the data has no modality {modality!r} (its modalities: {', '.join(modalities)})"
                           f"{_close(modality, list(modalities))}")
        else:
            _encoder_fit(add, modality, part, modalities[modality], stats.get(modality), folder)

    tasks = dict(dataset.tasks)
    if heads is None:
        for task, info in tasks.items():
            key = HEAD_SIZES.get(info.get("kind"))
            if key and int(info.get(key, 1)) != 1:
                add("model.tasks", f"is left out, so task {task!r} gets a {info['kind']} head with 1 output, but its "
                                   f"labels are [N, {info[key]}]: write model.tasks with {task}: "
                                   f"{{head: {info['kind']}, {key}: {info[key]}}} (and the other tasks)")
        return problems
    for task, part in heads.items():
        if task not in tasks:
            add(part.path, f"the data has no task {task!r} (its tasks: {', '.join(tasks)}){_close(task, list(tasks))}")
        else:
            _head_fit(add, task, part, tasks[task])
    return problems


def _encoder_fit(add, modality: str, part: _Part, info: dict, stats: dict | None, folder: bool) -> None:
    shape = list(info.get("shape") or [])
    sequence = bool(shape) and shape[0] is None
    data = (f"the data's modality {modality!r} has samples "
            f"[{', '.join('T' if size is None else str(size) for size in shape)}]")
    name = part.builtin
    ids = info.get("dtype") == "int64"  # a dtype: int64 modality: category ids [C] or token ids [T]
    if ids:
        data = data.replace("has samples", "has ids")
        _ids_fit(add, modality, part, info, stats)
        if name in ("text", "tabular"):
            return
    if name == "text" and folder:
        add(f"{part.path}.name", f"encoder text takes strings or integer byte ids (a sequence with dtype: int64), "
                                 f"but the data's modality {modality!r} gives float32 values ({data}); "
                                 f"use {_suggestion(shape)}")
        return
    if name in ENCODER_INPUTS:
        takes, rank = ENCODER_INPUTS[name]
        if len(shape) != rank or (sequence and rank != 2):
            add(f"{part.path}.name", f"encoder {name} takes {takes} per sample, but {data}; use {_suggestion(shape)}")
            return
    channels, features = part.number("in_channels"), part.number("in_features")
    if channels is not None and len(shape) >= 2 and not sequence and shape[0] != channels:
        add(f"{part.path}.in_channels", f"is {part.said('in_channels')}, but {data}: {shape[0]} "
                                        f"channel{'s' if shape[0] != 1 else ''}; "
                                        f"set in_channels: {shape[0]}")
    if features is not None and shape and shape[-1] is not None and shape[-1] != features:
        add(f"{part.path}.in_features", f"is {part.said('in_features')}, but {data}: {shape[-1]} features; "
                                        f"set in_features: {shape[-1]}")
    numeric = part.number("num_numeric")
    if numeric is not None and len(shape) == 1 and shape[0] != numeric:
        add(f"{part.path}.num_numeric", f"is {part.said('num_numeric')}, but {data}: {shape[0]} features; "
                                        f"set num_numeric: {shape[0]}")
    if name == "tabular" and folder and part.params.get("categories"):
        add(f"{part.path}.categories", f"is {part.said('categories')}, but the data's modality {modality!r} gives "
                                       "float32 features, not category ids; leave categories out (category ids are a "
                                       "modality of their own, dtype: int64, as `mtmm data build` writes them)")
    if len(shape) == 3 and not sequence:
        height, width = shape[1], shape[2]
        size = part.number("image_size")
        if size is not None and (height != size or width != size):
            fix = f"set image_size: {height}" if height == width else "it takes square images only; use cnn"
            add(f"{part.path}.image_size", f"is {part.said('image_size')}, but {data}: images {height}x{width}; {fix}")
        if name == "cnn" and isinstance(part.params.get("channels"), (list, tuple)):
            stages = len(part.params["channels"])
            if min(height, width) < 2 ** stages:
                most = max(0, int(math.floor(math.log2(max(1, min(height, width))))))
                add(f"{part.path}.channels", f"has {stages} stages, which need images of at least "
                                             f"{2 ** stages}x{2 ** stages} pixels, but {data}; give channels at most "
                                             f"{most} entries")
    max_len = part.number("max_len")
    if max_len is not None and len(shape) == 2:
        longest, row = (stats["longest"], stats["longest_row"]) if sequence and stats else (shape[0], None)
        if longest is not None and longest > max_len:
            where = "" if row is None else f" (sample row {row})"
            add(f"{part.path}.max_len", f"is {part.said('max_len')}, but the data's modality {modality!r} has a "
                                        f"sequence of {longest} frames{where}, longer than max_len; set "
                                        f"{part.path}.max_len to at least {longest} (or shorten the sequences)", row)


def _ids_fit(add, modality: str, part: _Part, info: dict, stats: dict | None) -> None:
    """An encoder against a modality of ids: ``tabular`` needs ``num_numeric: 0`` and ``categories`` equal to
    the vocabulary sizes; ``text`` byte ids (a vocabulary of at most 257) and ``max_len`` the longest text;
    a plugin's ``vocab_size`` at least the data's vocabulary."""
    name, sizes = part.builtin, [int(size) for size in info.get("vocab_sizes") or []]
    sequence = info.get("kind") == "sequence"
    what = f"the data's modality {modality!r}"
    if name == "tabular":
        if sequence:
            add(f"{part.path}.name", f"encoder tabular takes features or category ids per sample, but {what} is a "
                                     "sequence of ids; use text (byte ids) or an encoder for its tokenizer")
            return
        if part.number("num_numeric") not in (0, None):
            add(f"{part.path}.num_numeric", f"is {part.said('num_numeric')}, but {what} holds category ids only "
                                            "(no numeric features); set num_numeric: 0")
        given = list(part.params.get("categories") or [])
        if sizes and given != sizes:
            add(f"{part.path}.categories", f"is {given}, but {what} has {len(sizes)} category column(s) with "
                                           f"vocabularies of {sizes} ids (the unknown bucket included); set "
                                           f"categories: {sizes}")
        return
    if name == "text":
        if not sequence:
            add(f"{part.path}.name", f"encoder text takes a sequence of ids, but {what} holds category ids; use tabular")
        elif sizes and sizes[0] > 257:
            add(f"{part.path}.name", f"encoder text embeds byte ids (a vocabulary of 257), but {what} has a vocabulary "
                                     f"of {sizes[0]} ids (a tokenizer's); use an encoder made for that tokenizer")
        max_len = part.number("max_len")
        longest = (stats or {}).get("longest")
        if sequence and max_len is not None and longest is not None and longest > max_len:
            add(f"{part.path}.max_len", f"is {part.said('max_len')}, but {what} has a sequence of {longest} ids "
                                        f"(sample row {stats['longest_row']}); set {part.path}.max_len to at least "
                                        f"{longest}", stats["longest_row"])
        return
    vocab = part.number("vocab_size")
    if vocab is not None and sizes and max(sizes) > vocab:
        add(f"{part.path}.vocab_size", f"is {part.said('vocab_size')}, but {what} has ids up to {max(sizes) - 1}; "
                                       f"set vocab_size: {max(sizes)}")


def _head_fit(add, task: str, part: _Part, info: dict) -> None:
    name = part.builtin
    if name not in HEAD_TASK_KINDS:
        return  # a plugin's head, or contrastive: nothing known to compare
    kind = info.get("kind")
    if kind != HEAD_TASK_KINDS[name]:
        fix = next((head for head, task_kind in HEAD_TASK_KINDS.items() if task_kind == kind), None)
        add(f"{part.path}.head", f"is {name}, but the data's task {task!r} is {kind}"
                                 + (f"; use head: {fix}" if fix else ""))
        return
    if name == "classification":
        classes = info.get("num_classes")
        if part.params.get("num_classes") != classes:
            add(f"{part.path}.num_classes", f"is {part.said('num_classes')}, but the data's task {task!r} has "
                                            f"{classes} classes; set num_classes: {classes} (or leave model.tasks "
                                            "out to take the tasks from the data)")
        return
    key = HEAD_SIZES[name]
    size = int(info.get(key, 1))
    if part.params.get(key) != size:
        labels = f"[N, {size}]" if key in info else "[N]"
        add(f"{part.path}.{key}", f"is {part.said(key)}, but the data's task {task!r} has labels {labels}, "
                                  f"{size} per sample; set {key}: {size}")


def require_model_fit(model: Any, dataset: Any) -> None:
    """Raise a one-line ValueError (each problem's config key and message) when the model of
    ``model`` (a completed model spec) cannot train on ``dataset``: for the trainer, before it
    builds the model, so that e.g. a sequence longer than an encoder's max_len fails at once."""
    problems = check_model_fit(model, dataset)
    if problems:
        raise ValueError("the data does not fit the model: " + "; ".join(
            f"{p.field}: {p.message}" for p in problems))


def check_against_config(path: str | Path, config: Any, overrides: list[str] | None = None, *,
                         chunk_bytes: int = CHUNK_BYTES) -> list[Problem]:
    """Every problem of the data folder at ``path`` and, when it has none, of training the model
    of ``config`` on it (:func:`check_model_fit`).

    ``config`` is a config dict, or a config file or shipped config name as ``mtmm train``
    takes it (``mtmm_core.config.load_config``), with ``key=value`` ``overrides``. A config that
    cannot be read raises (SpecError), before the folder is scanned. Problems about the config
    name it as their file (``"config"`` for a dict).
    """
    import copy

    from mtmm_core.config import apply_override, load_config

    if isinstance(config, dict):
        source, config = "config", copy.deepcopy(config)
        for override in overrides or []:
            apply_override(config, override)
    else:
        source, config = str(config), load_config(config, overrides)
    model = config.get("model")
    encoders = model.get("encoders") if isinstance(model, dict) else None
    if not isinstance(encoders, dict) or all(isinstance(e, str) or (isinstance(e, dict) and "name" in e)
                                             for e in encoders.values()):
        if encoders is not None or not isinstance(model, dict):
            _model_parts(model, data_sizes=True)  # a config that cannot be read fails before the folder is scanned
    problems = check_dataset(path, chunk_bytes=chunk_bytes)
    if problems:
        return problems
    from mtmm_core.data import infer_encoders
    from mtmm_core.userdata import FolderDataset

    dataset = FolderDataset(path, check=False)
    return check_model_fit(infer_encoders(model, dataset), dataset, source=source)
