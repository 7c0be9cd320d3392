"""The traced formats of ``mtmm export``: ONNX and TorchScript, with flat named inputs, checked against the model."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from mtmm_core.contracts import Batch
from mtmm_core.errors import MtmmError, UsageError
from mtmm_core.model import MultimodalMultitaskModel, component_label

ONNX_OPSET = 17
#: An exported file must reproduce the PyTorch model within ``ATOL + RTOL * |expected|``.
ATOL, RTOL = 1e-4, 1e-4


@dataclass
class InputSpec:
    """One flat input: ``name`` (``audio``, ``audio.lengths``, ``audio.present``), its modality, its role
    (``values``, ``lengths`` or ``present``), dtype and shape (``"batch"`` and named dynamic axes as strings)."""

    name: str
    modality: str
    role: str
    dtype: str
    shape: list[int | str]

    def dynamic_axes(self) -> dict[int, str]:
        return {axis: size for axis, size in enumerate(self.shape) if isinstance(size, str)}


@dataclass
class Signature:
    """The flat interface of an exported model: its inputs in order and its outputs (one per task)."""

    inputs: list[InputSpec]
    tasks: list[str]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def flatten(self, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor],
                present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's dict inputs as ``{input name: tensor}`` in this signature's order."""
        tables = {"values": inputs, "lengths": lengths, "present": present}
        return {spec.name: tables[spec.role][spec.modality] for spec in self.inputs}

    def unflatten(self, tensors: tuple[torch.Tensor, ...]) -> tuple[dict, dict, dict]:
        tables: dict[str, dict[str, torch.Tensor]] = {"values": {}, "lengths": {}, "present": {}}
        for spec, tensor in zip(self.inputs, tensors):
            tables[spec.role][spec.modality] = tensor
        return tables["values"], tables["lengths"], tables["present"]


class FlatModel(nn.Module):
    """The model called with flat tensors in the order of ``signature.inputs``; returns one tensor per task."""

    def __init__(self, model: MultimodalMultitaskModel, signature: Signature):
        super().__init__()
        self.model = model
        self.signature = signature

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs, lengths, present = self.signature.unflatten(tensors)
        output = self.model(inputs, lengths, present)
        return tuple(output.predictions[task] for task in self.signature.tasks)


class DictModel(nn.Module):
    """:class:`FlatModel` taking ``{input name: tensor}`` and returning ``{task: tensor}`` (the TorchScript form)."""

    def __init__(self, flat: FlatModel):
        super().__init__()
        self.flat = flat

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.flat(*[inputs[name] for name in self.flat.signature.names])
        return dict(zip(self.flat.signature.tasks, outputs))


def _write_traced(model: MultimodalMultitaskModel, config: dict[str, Any], path: Path, format: str) -> dict[str, Any]:
    """Trace ``model`` on samples of the run's data set, save it to ``path`` (ONNX or TorchScript), run the
    saved file on other batches and compare with the model; returns the export.json entries it adds."""
    split = _sample_split(config, format)
    signature = make_signature(model, split, format)
    flat = FlatModel(model, signature).eval()
    example = trace_inputs(split, signature)
    with _tracing(), torch.no_grad():
        reference = flat(*example.values())
        signature.outputs = [{"name": task, "dtype": _dtype_name(value), "shape": ["batch", *value.shape[1:]]}
                             for task, value in zip(signature.tasks, reference)]
        if format == "onnx":
            _export_onnx(flat, example, path, signature)
            run = _onnx_runner(path)
        else:
            _export_torchscript(flat, example, path)
            run = _torchscript_runner(path, signature.tasks)
        verification = verify(flat, run, check_batches(split, signature), format)
    entries: dict[str, Any] = {
        "inputs": [vars(spec) for spec in signature.inputs],
        "outputs": signature.outputs,
        "verification": verification,
    }
    if format == "onnx":
        entries["onnx_opset"] = ONNX_OPSET
    return entries


def _sample_split(config: dict[str, Any], format: str) -> Any:
    """A split of the run's data set to take example samples from (test, else the first one)."""
    from mtmm_core.data import load_dataset

    name = config["data"].get("name")
    try:
        dataset = load_dataset(config["data"])
    except (MtmmError, OSError, ValueError, KeyError) as error:
        raise UsageError(f"--format {format} traces the model on samples of the run's data set {name!r}, which "
                         f"could not be loaded: {error}") from error
    splits = {key: split for key, split in dataset.splits.items() if len(split) > 0}
    if not splits:
        raise UsageError(f"--format {format} traces the model on samples of the run's data set {name!r}, "
                         "which has none")
    return splits.get("test", next(iter(splits.values())))


def _rows(split: Any, start: int, count: int) -> np.ndarray:
    return (np.arange(start, start + count) % len(split)).astype(np.int64)


def make_signature(model: MultimodalMultitaskModel, split: Any, format: str) -> Signature:
    """The flat inputs of ``model`` as the data set gives them: each modality's tensor (batch axis dynamic,
    and the length axis of a modality the data gives lengths for), its lengths, and its presence flags."""
    batch = split.batch(_rows(split, 0, 2))
    specs = []
    for modality in model.modalities:
        values = batch.inputs.get(modality)
        encoder = component_label(model.encoders[modality], "encoder")
        if values is None:
            raise UsageError(f"--format {format}: the run's data set gives no input for modality {modality!r} "
                             f"({encoder}), so the model cannot be traced on it")
        if not isinstance(values, torch.Tensor):
            raise UsageError(f"--format {format} takes tensor inputs only, but modality {modality!r} ({encoder}) "
                             f"takes a {type(values).__name__}; export this run with --format safetensors")
        lengths = (batch.lengths or {}).get(modality)
        shape: list[int | str] = ["batch", *values.shape[1:]]
        if lengths is not None and values.dim() >= 2:
            shape[1] = f"{modality}_length"
        specs.append(InputSpec(modality, modality, "values", _dtype_name(values), shape))
        if lengths is not None:
            specs.append(InputSpec(f"{modality}.lengths", modality, "lengths", "int64", ["batch"]))
        specs.append(InputSpec(f"{modality}.present", modality, "present", "bool", ["batch"]))
    signature = Signature(specs, model.tasks)
    clash = sorted(set(signature.names) & set(model.tasks))
    if clash:
        raise UsageError(f"--format {format}: task {clash[0]!r} has the name of an input; ONNX and TorchScript "
                         "need distinct names (export with --format safetensors)")
    return signature


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _inputs(split: Any, signature: Signature, rows: np.ndarray, present: dict[str, np.ndarray],
            lengths: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Rows of ``split`` as flat inputs, with the given presence flags; ``lengths(modality, data_lengths)``
    may shorten the data's lengths."""
    batch: Batch = split.batch(rows)
    flags = {m: torch.from_numpy(present[m].copy()) for m in present}
    sizes = {}
    for spec in signature.inputs:
        if spec.role == "lengths":
            given = batch.lengths[spec.modality].long()
            sizes[spec.modality] = lengths(spec.modality, given) if lengths is not None else given
    values = {m: batch.inputs[m] for m in present}
    return signature.flatten(values, sizes, flags)


def trace_inputs(split: Any, signature: Signature) -> dict[str, torch.Tensor]:
    """The batch the model is traced on. Tracing records the path that Python code takes for these inputs,
    so it holds the cases on which mtmm's components branch: a sample with every modality, for each modality
    a sample with that modality alone (the others absent, so cross-modal attention meets samples without
    keys), and for each modality with lengths a sample with that modality alone and length 0. An absent
    modality's length is 0."""
    modalities = sorted({spec.modality for spec in signature.inputs})
    sequences = sorted({spec.modality for spec in signature.inputs if spec.role == "lengths"})
    count = 1 + len(modalities) + len(sequences)
    present = {m: np.zeros(count, dtype=bool) for m in modalities}
    empty = {m: np.zeros(count, dtype=bool) for m in sequences}
    for i, m in enumerate(modalities):
        present[m][0] = present[m][1 + i] = True
    for j, m in enumerate(sequences):
        row = 1 + len(modalities) + j
        present[m][row] = empty[m][row] = True
    for m in sequences:
        empty[m] |= ~present[m]
    return _inputs(split, signature, _rows(split, 0, count), present,
                   lambda m, given: torch.where(torch.from_numpy(empty[m]), 0, given))


def check_batches(split: Any, signature: Signature) -> list[dict[str, torch.Tensor]]:
    """Batches unlike the traced one to check an export on: 9 other samples with random absences and
    shortened lengths (0 included), and a single sample with everything present."""
    modalities = sorted({spec.modality for spec in signature.inputs})
    rng = np.random.default_rng(0)
    count = 9
    flags = rng.random((count, len(modalities))) < 0.7
    for row in np.flatnonzero(~flags.any(axis=1)):
        flags[row, rng.integers(len(modalities))] = True
    present = {m: flags[:, i] for i, m in enumerate(modalities)}

    def shorter(_: str, given: torch.Tensor) -> torch.Tensor:
        cut = torch.from_numpy(rng.integers(0, given.numpy() + 1))
        cut[0] = 0  # an empty sequence, present or not
        return cut

    single = {m: np.ones(1, dtype=bool) for m in modalities}
    start = 1 + len(modalities) + sum(spec.role == "lengths" for spec in signature.inputs)  # past the traced rows
    return [_inputs(split, signature, _rows(split, start, count), present, shorter),
            _inputs(split, signature, _rows(split, start + count, 1), single)]


def verify(flat: FlatModel, run: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
           batches: list[dict[str, torch.Tensor]], format: str) -> dict[str, Any]:
    """Run the exported file on ``batches`` and compare with the model; a UsageError when they differ by more
    than ``ATOL + RTOL * |expected|``. Returns the batch sizes and the largest difference per task."""
    largest = {task: 0.0 for task in flat.signature.tasks}
    for batch in batches:
        expected = [value.double().numpy() for value in flat(*batch.values())]
        got = run({name: value.numpy() for name, value in batch.items()})
        for task, want, have in zip(flat.signature.tasks, expected, got):
            have = np.asarray(have, dtype=np.float64)
            if have.shape != want.shape or not np.allclose(have, want, rtol=RTOL, atol=ATOL, equal_nan=True):
                if have.shape != want.shape:
                    difference = f"gives shape {list(have.shape)} instead of {list(want.shape)}"
                elif np.isnan(have).any() and not np.isnan(want).any():
                    difference = "gives NaN"
                else:
                    difference = f"differs by {np.abs(have - want).max():.3g}"
                raise UsageError(
                    f"the {format} export does not reproduce the model: task {task!r} {difference} "
                    f"on a batch of {len(want)} samples. Tracing records the path the Python code takes for one "
                    "example batch, and some component's forward takes another path for other inputs; export this "
                    "run with --format safetensors")
            largest[task] = max(largest[task], float(np.abs(have - want).max()) if have.size else 0.0)
    return {"batch_sizes": [len(next(iter(batch.values()))) for batch in batches], "max_abs_diff": largest,
            "tolerance": {"atol": ATOL, "rtol": RTOL}}


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """Hide the TracerWarnings about the model's input checks (which the traced graph does not keep) and
    torch's DeprecationWarnings about TorchScript while tracing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _export_onnx(flat: FlatModel, example: dict[str, torch.Tensor], path: Path, signature: Signature) -> None:
    """The TorchScript-based exporter (``dynamo=False``), whose output this module checks against the model;
    the dynamo-based default is not yet checked that way (docs/export.md)."""
    import onnx

    dynamic_axes = {spec.name: spec.dynamic_axes() for spec in signature.inputs}
    dynamic_axes.update({task: {0: "batch"} for task in signature.tasks})
    try:
        with _quiet_stderr():  # on a failure torch prints the whole traced graph there
            torch.onnx.export(flat, tuple(example.values()), str(path), dynamo=False, input_names=signature.names,
                              output_names=signature.tasks, dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET)
    except (MtmmError, torch.OutOfMemoryError):
        raise
    except Exception as error:  # noqa: BLE001  (any failure to convert is this model's)
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        operator = re.search(r"operator '(\w+::\w+)'", first)
        user = _operator_user(flat, example, operator.group(1)) if operator else None
        if user is not None:
            first = f"{user} uses the operator {operator.group(1)}, which has no ONNX conversion (opset {ONNX_OPSET})"
        raise UsageError(f"the model cannot be exported to ONNX: {first}; export this run with --format "
                         "safetensors or --format torchscript") from error
    onnx.checker.check_model(str(path))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send what is written to file descriptor 2 (by C++ code too) to the null device for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _operator_user(flat: FlatModel, example: dict[str, torch.Tensor], operator: str) -> str | None:
    """The component (encoder, fusion, architecture or head) whose forward calls the aten ``operator``
    (``aten::erfinv``) on ``example``, found by running the model once; None when no component does."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model = flat.model
    components = [(encoder, f"{component_label(encoder, 'encoder')} of modality {m!r}")
                  for m, encoder in model.encoders.items()]
    components += [(model.fusion, component_label(model.fusion, "fusion")),
                   (model.architecture, component_label(model.architecture, "architecture"))]
    components += [(head, f"{component_label(head, 'head')} of task {t!r}") for t, head in model.heads.items()]
    running: list[str] = []
    found: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if running and not found and func._schema.name == operator:
                found.append(running[-1])
            return func(*args, **(kwargs or {}))

    def entering(label: str) -> Callable[..., None]:
        return lambda *_: running.append(label)  # None: the hook leaves the inputs alone

    def leaving(*_: Any) -> None:  # returns None: the hook leaves the output alone
        running.pop()

    handles = []
    for module, label in components:
        handles.append(module.register_forward_pre_hook(entering(label)))
        handles.append(module.register_forward_hook(leaving))
    try:
        with Watch(), torch.no_grad():
            flat(*example.values())
    except Exception:  # noqa: BLE001  (a best effort: the caller has the original error)
        return None
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _onnx_runner(path: Path) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def _export_torchscript(flat: FlatModel, example: dict[str, torch.Tensor], path: Path) -> None:
    try:
        traced = torch.jit.trace(DictModel(flat), (example,), strict=False, check_trace=False)
    except (MtmmError, torch.OutOfMemoryError):
        raise
    except Exception as error:  # noqa: BLE001
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UsageError(f"the model cannot be traced to TorchScript: {first}; export this run with "
                         "--format safetensors") from error
    torch.jit.save(traced, str(path))


def _torchscript_runner(path: Path, tasks: list[str]) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    loaded = torch.jit.load(str(path))

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = loaded({name: torch.from_numpy(value) for name, value in feeds.items()})
        return [outputs[task].numpy() for task in tasks]

    return run
