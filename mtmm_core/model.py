"""The composed model: encoders per modality -> one fusion -> multitask architecture -> task heads."""

from __future__ import annotations

import difflib
import warnings
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from mtmm_core.contracts import masked_mean
from mtmm_core.errors import ComponentError, MtmmError
from mtmm_core.losses import LossInfo, check_loss_value, loss_info
from mtmm_kernels import multitask_loss
from mtmm_kernels._validate import value_checks, value_checks_enabled  # noqa: F401  (value_checks: re-exported)


class ModelOutput(NamedTuple):
    """``predictions`` per task, the ``present`` masks ``[B]`` used, and the ``fused`` representation ``[B, D]``."""

    predictions: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    fused: torch.Tensor


def batch_size_of(x: Any) -> int:
    """Number of samples in one modality's batch: a tensor, a list, or a dict of those."""
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            raise ValueError("expected a batch with a leading batch dimension, got a scalar tensor")
        return int(x.shape[0])  # a plain int, also under torch.jit.trace (where a size is traced)
    if isinstance(x, Mapping):
        sizes = {key: batch_size_of(value) for key, value in x.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"the entries of this modality's batch have different batch sizes: {sizes}")
        return next(iter(sizes.values()))
    if isinstance(x, (list, tuple)):
        return len(x)
    raise ValueError(f"cannot tell the batch size of a {type(x).__name__}; pass a tensor, a list or a dict")


class UnknownTaskWarning(UserWarning):
    """Targets or task masks name a task the model does not have (ignored; perhaps a typo)."""


class MultimodalMultitaskModel(nn.Module):
    """Encoders per modality, one fusion, a multitask architecture, task heads and a loss weighting.

    Call it as ``model(inputs, lengths=None, present=None)``: ``inputs`` maps modality
    names to their batches (any non-empty subset of the model's modalities), ``lengths``
    maps a modality to valid lengths ``[B]``, ``present`` maps a modality to a bool
    ``[B]`` (False = this sample lacks the modality; default all True).

    Checks that read input *values* (every sample has a modality, lengths and class indices in
    range; each a device sync on a GPU) run only while ``value_checks_enabled()``: on by default,
    off under ``with value_checks(False):`` (the trainer, once :meth:`check_values` has checked
    the batch's host copy) and under ``torch.compile``.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], fusion: nn.Module, architecture: nn.Module,
                 heads: Mapping[str, nn.Module], weighting: nn.Module, modality_dropout: float = 0.0,
                 spec: Mapping[str, Any] | None = None):
        super().__init__()
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.architecture = architecture
        self.heads = nn.ModuleDict(heads)
        self.weighting = weighting
        self.losses = {task: _head_loss(task, head) for task, head in self.heads.items()}  # registered losses
        self._warned_keys: set[tuple[str, str]] = set()  # unknown task keys already warned about
        self.modality_dropout = modality_dropout
        self.spec = dict(spec or {})

    @property
    def modalities(self) -> list[str]:
        """The modality names, sorted."""
        return sorted(self.encoders)

    @property
    def tasks(self) -> list[str]:
        """The task names, in spec order."""
        return list(self.heads)

    def forward(self, inputs: Mapping[str, Any], lengths: Mapping[str, torch.Tensor] | None = None,
                present: Mapping[str, torch.Tensor] | None = None) -> ModelOutput:
        """Predictions for every task from any non-empty subset of the modalities."""
        lengths, batch = dict(lengths or {}), self._check_inputs(inputs)
        present = self._presence(inputs, present, batch, next(self.parameters()).device)
        if self.training and self.modality_dropout > 0:
            present = self._drop_modalities(present)

        tokens, masks = {}, {}
        for modality in sorted(inputs):
            batch_input = _blank_absent(inputs[modality], present[modality])  # NaN there cannot reach a weight
            encoded = _run(self.encoders[modality], "encoder", f"modality {modality!r}", batch_input,
                           lengths.get(modality))
            self._check_encoded(modality, encoded, batch)
            tokens[modality], masks[modality] = encoded.tokens, encoded.mask & present[modality][:, None]

        fused = _run(self.fusion, "fusion", "", tokens, masks, present)
        if fused.shape != (batch, self.fusion.out_dim):
            raise ValueError(f"{component_label(self.fusion, 'fusion')} returned shape {tuple(fused.shape)}, "
                             f"expected [B={batch}, out_dim={self.fusion.out_dim}]")
        features = _run(self.architecture, "architecture", "", fused)
        pooled = {m: masked_mean(tokens[m], masks[m]) for m in tokens}
        predictions = {}
        for task, head in self.heads.items():
            if getattr(head, "uses_modalities", False):
                predictions[task] = _run(head, "head", f"task {task!r}", features[task], pooled=pooled, present=present)
            else:
                predictions[task] = _run(head, "head", f"task {task!r}", features[task])
        return ModelOutput(predictions, present, fused)

    def task_losses(self, output: ModelOutput, targets: Mapping[str, torch.Tensor],
                    task_masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Unweighted per-task losses ``[T]`` in task order; a task without target or label counts 0.

        Each head's ``loss_kind`` names a registered loss (``mtmm list loss``). The tasks whose loss
        is one of mtmm's fused kinds go through ``mtmm_kernels.multitask_loss`` together (one
        fused launch on GPU); any other loss (``contrastive``, a plugin's) is called as
        ``loss(prediction, target, mask)``. A head with a ``target_scale`` (regression) is scored on
        ``prediction / scale`` against ``target / scale``, so tasks in different units weigh alike.
        """
        task_masks = dict(task_masks or {})
        self._check_task_keys(targets, task_masks)
        losses: dict[str, torch.Tensor] = {}
        fused: list[tuple[str, torch.Tensor, torch.Tensor, str, torch.Tensor | None]] = []
        for task, head in self.heads.items():
            info, prediction = self.losses[task], output.predictions[task]
            if info.needs_target and task not in targets:
                losses[task] = prediction.sum() * 0.0
                continue
            target = targets[task] if info.needs_target else None
            mask = self.counted_samples(task, output, target, task_masks.get(task))
            scale = getattr(head, "target_scale", None)
            if scale is not None and target is not None:
                prediction, target = prediction / scale, target / scale
            if info.fused_kind is not None:
                fused.append((task, prediction, target, info.fused_kind, mask))
            else:
                losses[task] = _call_loss(info, task, prediction, target, _all_true(mask, prediction))
        if fused:
            tasks, preds, golds, kinds, masks = zip(*fused)
            try:
                _, per_task = multitask_loss(preds, golds, kinds, task_masks=masks)
            except ValueError as error:
                raise ValueError(f"{error} (task i is the i-th of {list(tasks)})") from error
            losses.update(zip(tasks, per_task.unbind()))
        return torch.stack([losses[task].float() for task in self.heads])

    def labelled_tasks(self, output: ModelOutput, targets: Mapping[str, torch.Tensor],
                       task_masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Bool ``[T]`` in task order: True where the task has at least one labelled sample in the batch.

        A task is absent when its loss needs a target and it has none, when its task mask is all
        False, when every target equals its loss's ``ignore_index`` (cross entropy: -100), or when no
        sample has every modality the head names in ``modalities`` (contrastive). The weightings
        leave absent tasks out of the step. No host sync.
        """
        task_masks = dict(task_masks or {})
        self._check_task_keys(targets, task_masks)
        flags = []
        for task in self.heads:
            info, prediction = self.losses[task], output.predictions[task]
            if info.needs_target and task not in targets:
                flags.append(torch.zeros((), dtype=torch.bool, device=prediction.device))
                continue
            target = targets[task] if info.needs_target else None
            flags.append(_all_true(self.counted_samples(task, output, target, task_masks.get(task)), prediction).any())
        return torch.stack(flags)

    def counted_samples(self, task: str, output: ModelOutput, target: torch.Tensor | None,
                         task_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Bool ``[B]``: the samples that count in ``task``'s loss (its task mask, every modality its head
        names in ``modalities`` present, a target other than its loss's ``ignore_index``), or None when
        every sample does."""
        prediction, ignore_index = output.predictions[task], self.losses[task].ignore_index
        mask = None if task_mask is None else task_mask.to(device=prediction.device, dtype=torch.bool)
        for modality in getattr(self.heads[task], "modalities", ()):
            flags = _present_or_false(output.present, modality, prediction)
            mask = flags if mask is None else mask & flags
        if ignore_index is not None and target is not None:
            labelled = target.to(prediction.device) != ignore_index
            mask = labelled if mask is None else mask & labelled
        return mask

    def compute_loss(self, output: ModelOutput, targets: Mapping[str, torch.Tensor],
                     task_masks: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total loss (scalar), plus :meth:`regularization` when there is one, and the
        unweighted loss of each task. Tasks without a labelled sample take no part (:meth:`labelled_tasks`)."""
        from mtmm_core.weighting import weighted_total

        losses = self.task_losses(output, targets, task_masks)
        total = weighted_total(self.weighting, losses, self.labelled_tasks(output, targets, task_masks))
        regularization = self.regularization()
        if regularization is not None:
            total = total + regularization
        return total, dict(zip(self.tasks, losses))

    def regularization(self) -> torch.Tensor | None:
        """The architecture's penalty on its parameters (its optional ``regularization()``, a scalar), or None."""
        method = getattr(self.architecture, "regularization", None)
        return None if method is None else method()

    def _check_inputs(self, inputs: Mapping[str, Any]) -> int:
        if not inputs:
            raise ValueError(f"no modality given; this model takes {', '.join(self.modalities)}")
        unknown = sorted(set(inputs) - set(self.encoders))
        if unknown:
            raise ValueError(f"unknown modality {', '.join(map(repr, unknown))}; this model takes "
                             f"{', '.join(self.modalities)}")
        sizes = {}
        for modality, x in inputs.items():
            try:
                sizes[modality] = batch_size_of(x)
            except ValueError as error:
                raise ValueError(f"modality {modality!r}: {error}") from error
        if len(set(sizes.values())) != 1:
            raise ValueError(f"the modalities have different batch sizes (dimension 0): {sizes}")
        return next(iter(sizes.values()))

    def check_values(self, inputs: Mapping[str, Any], lengths: Mapping[str, torch.Tensor] | None = None,
                     present: Mapping[str, torch.Tensor] | None = None) -> None:
        """Run the forward pass's value checks on a batch where it is, without the network: every sample
        has a modality, and each encoder's ``check_values(x, lengths)`` (where it has one: lengths, token
        ids, categories in range). The trainer calls it on each batch's host copy, before the copy to the
        device, and trains with the checks off. Raises the ValueError the forward pass would."""
        batch = self._check_inputs(inputs)
        flags = next((f for f in (present or {}).values() if isinstance(f, torch.Tensor)), None)
        with value_checks(True):
            self._presence(inputs, present, batch, flags.device if flags is not None else torch.device("cpu"))
            for modality in sorted(inputs):
                encoder = self.encoders[modality]
                if hasattr(encoder, "check_values"):
                    _run_method(encoder, "check_values", "encoder", f"modality {modality!r}", inputs[modality],
                                (lengths or {}).get(modality))

    def _presence(self, inputs: Mapping[str, Any], present: Mapping[str, torch.Tensor] | None,
                  batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        result = {}
        for modality in inputs:
            flags = (present or {}).get(modality)
            if flags is None:
                flags = torch.ones(batch, dtype=torch.bool, device=device)
            if flags.shape != (batch,):
                raise ValueError(f"present[{modality!r}] must have shape [B={batch}], got {tuple(flags.shape)}")
            result[modality] = flags.to(device=device, dtype=torch.bool)
        unknown = sorted(set(present or {}) - set(inputs))
        if unknown:
            raise ValueError(f"present names modalities that are not in inputs: {', '.join(unknown)}")
        if value_checks_enabled():
            missing_all = ~torch.stack(list(result.values())).any(dim=0)
            if bool(missing_all.any()):
                rows = missing_all.nonzero().squeeze(1).tolist()
                raise ValueError(f"samples {rows[:10]} have no modality present; every sample needs at least one")
        return result

    def _drop_modalities(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Modality dropout: hide each present modality with probability p, keeping one per sample.

        A sample that would lose all its modalities keeps the present one whose draw came closest to
        keeping it (uniform among its present modalities). No host sync, one draw per step.
        """
        names = sorted(present)
        stacked = torch.stack([present[m] for m in names], dim=1)  # [B, M]
        draws = torch.rand(stacked.shape, device=stacked.device)
        kept = stacked & (draws >= self.modality_dropout)
        empty = ~kept.any(dim=1)
        closest = draws.masked_fill(~stacked, -1.0).argmax(dim=1, keepdim=True)
        restore = torch.zeros_like(stacked).scatter_(1, closest, True) & stacked
        kept = kept | (restore & empty[:, None])
        return {m: kept[:, i] for i, m in enumerate(names)}

    def _check_task_keys(self, targets: Mapping[str, Any], task_masks: Mapping[str, Any]) -> None:
        """Warn (once per key) about a target or task mask for a task this model does not have: legal (a data
        set may label more tasks than a model learns) but, when the name is close to a task's, a typo that
        would leave that task without labels."""
        for name, mapping in (("targets", targets), ("task_masks", task_masks)):
            for key in mapping:
                if key in self.heads or (name, key) in self._warned_keys:
                    continue
                self._warned_keys.add((name, key))
                close = difflib.get_close_matches(str(key), list(self.heads), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                warnings.warn(f"{name} has task {key!r}{hint}, which this model does not have; it is ignored. "
                              f"The model's tasks: {', '.join(self.heads)}", UnknownTaskWarning, stacklevel=3)

    def _check_encoded(self, modality: str, encoded: Any, batch: int) -> None:
        encoder = self.encoders[modality]
        tokens, mask = encoded
        if tokens.dim() != 3 or tokens.shape[0] != batch or tokens.shape[2] != encoder.out_dim:
            raise ValueError(f"{component_label(encoder, 'encoder')} of modality {modality!r} returned tokens of shape "
                             f"{tuple(tokens.shape)}, expected [B={batch}, L, D={encoder.out_dim}]")
        if mask.shape != tokens.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"{component_label(encoder, 'encoder')} of modality {modality!r} returned a mask of shape "
                             f"{tuple(mask.shape)} and dtype {mask.dtype}, expected bool {tuple(tokens.shape[:2])}")


def component_label(module: Any, kind: str) -> str:
    """How messages name a built component: ``fusion 'film' from mtmm-extra 0.3.0`` (set by build_model),
    else its kind and class name."""
    return getattr(module, "mtmm_origin", None) or f"{kind} {type(module).__name__}"


def _blank_absent(x: Any, present: torch.Tensor) -> Any:
    """One modality's batch with every absent sample's floating-point input replaced by zeros.

    Masks replace, never multiply: ``0 * NaN`` is NaN, in the forward pass and in the weight
    gradients, so an absent sample's values are swapped out (``torch.where``) before any arithmetic.
    ``x`` is a tensor ``[B, ...]`` or a mapping of them; integer inputs (token ids) pass unchanged.
    """
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        keep = present.to(x.device).reshape(-1, *[1] * (x.dim() - 1))
        return torch.where(keep, x, 0.0)
    if isinstance(x, Mapping):
        return {key: _blank_absent(value, present) for key, value in x.items()}
    return x


def _present_or_false(present: Mapping[str, torch.Tensor], modality: str, like: torch.Tensor) -> torch.Tensor:
    flags = present.get(modality)
    if flags is None:
        return torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
    return flags


def _run(module: nn.Module, kind: str, where: str, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)``, with any error it raises naming the component as built (kind,
    registered name, distribution) and ``where`` (``modality 'audio'``, ``task 'digit'``), the original
    chained. A ValueError (bad input) stays a ValueError; anything else (a bug in the component) becomes
    a :class:`ComponentError`. mtmm's own errors and running out of memory pass unchanged."""
    return _run_method(module, "__call__", kind, where, *args, **kwargs)


def _run_method(module: nn.Module, method: str, kind: str, where: str, *args: Any, **kwargs: Any) -> Any:
    """``module.<method>(*args, **kwargs)`` with the errors of :func:`_run` (which calls ``__call__``)."""
    label = f"{where + ': ' if where else ''}{component_label(module, kind)}"
    try:
        return getattr(module, method)(*args, **kwargs)
    except (MtmmError, torch.OutOfMemoryError):
        raise
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from error
    except Exception as error:
        called = "" if method == "__call__" else f".{method}"
        raise ComponentError(f"{label}{called} failed with {type(error).__name__}: {error} (the chained exception "
                             "has its traceback)") from error


def _head_loss(task: str, head: nn.Module) -> LossInfo:
    """The registered loss a head names in ``loss_kind``; a ValueError naming the head otherwise."""
    name = getattr(head, "loss_kind", None)
    if not isinstance(name, str):
        raise ValueError(f"{component_label(head, 'head')} of task {task!r} has no loss_kind: set it to the "
                         "registered name of a loss (mtmm list loss)")
    try:
        return loss_info(name)
    except MtmmError as error:
        raise ValueError(f"{component_label(head, 'head')} of task {task!r} names the loss {name!r}: {error}") from error


def _call_loss(info: LossInfo, task: str, prediction: torch.Tensor, target: torch.Tensor | None,
               mask: torch.Tensor) -> torch.Tensor:
    """A registered loss function's value for one task, checked to be a scalar; a failure inside it
    is a :class:`ComponentError` naming the loss, its distribution and the task."""
    try:
        value = info.component.factory(prediction, target, mask)
    except (MtmmError, torch.OutOfMemoryError):
        raise
    except Exception as error:
        raise ComponentError(f"{info.label} (task {task!r}) failed with {type(error).__name__}: {error} "
                             "(the chained exception has its traceback)") from error
    return check_loss_value(value, info, task)


def _all_true(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``mask``, or all True ``[B]`` on ``like``'s device when it is None."""
    if mask is None:
        return torch.ones(like.shape[0], dtype=torch.bool, device=like.device)
    return mask
