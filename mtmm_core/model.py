"""The composed model: encoders per modality -> one fusion -> multitask architecture -> task heads."""

from __future__ import annotations

import difflib
import warnings
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from mtmm_core.contracts import masked_mean
from mtmm_core.losses import contrastive_loss
from mtmm_kernels import multitask_loss


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
        return x.shape[0]
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
        present = self._presence(inputs, present, batch)
        if self.training and self.modality_dropout > 0:
            present = self._drop_modalities(present)

        tokens, masks = {}, {}
        for modality in sorted(inputs):
            try:
                batch_input = _blank_absent(inputs[modality], present[modality])  # NaN there cannot reach a weight
                encoded = self.encoders[modality](batch_input, lengths.get(modality))
            except ValueError as error:
                raise ValueError(f"modality {modality!r}: {error}") from error
            self._check_encoded(modality, encoded, batch)
            tokens[modality], masks[modality] = encoded.tokens, encoded.mask & present[modality][:, None]

        fused = self.fusion(tokens, masks, present)
        if fused.shape != (batch, self.fusion.out_dim):
            raise ValueError(f"{component_label(self.fusion, 'fusion')} returned shape {tuple(fused.shape)}, "
                             f"expected [B={batch}, out_dim={self.fusion.out_dim}]")
        features = self.architecture(fused)
        pooled = {m: masked_mean(tokens[m], masks[m]) for m in tokens}
        predictions = {}
        for task, head in self.heads.items():
            if getattr(head, "uses_modalities", False):
                predictions[task] = head(features[task], pooled=pooled, present=present)
            else:
                predictions[task] = head(features[task])
        return ModelOutput(predictions, present, fused)

    def task_losses(self, output: ModelOutput, targets: Mapping[str, torch.Tensor],
                    task_masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Unweighted per-task losses ``[T]`` in task order; a task without target or label counts 0.

        The supervised tasks go through ``mtmm_kernels.multitask_loss`` together (one fused
        launch on GPU). A head with a ``target_scale`` (regression) is scored on
        ``prediction / scale`` against ``target / scale``, so tasks in different units weigh alike.
        """
        task_masks = dict(task_masks or {})
        self._check_task_keys(targets, task_masks)
        losses: dict[str, torch.Tensor] = {}
        supervised: list[str] = []
        for task, head in self.heads.items():
            prediction = output.predictions[task]
            if head.loss_kind == "contrastive":
                first, second = head.modalities
                both = _present_or_false(output.present, first, prediction) & _present_or_false(
                    output.present, second, prediction)
                mask = task_masks.get(task)
                losses[task] = contrastive_loss(prediction, both if mask is None else mask.bool() & both)
            elif task in targets:
                supervised.append(task)
            else:
                losses[task] = prediction.sum() * 0.0
        if supervised:
            preds, golds = [], []
            for task in supervised:
                prediction, target = output.predictions[task], targets[task]
                scale = getattr(self.heads[task], "target_scale", None)
                if scale is not None:
                    prediction, target = prediction / scale, target / scale
                preds.append(prediction)
                golds.append(target)
            kinds = [self.heads[task].loss_kind for task in supervised]
            masks = [task_masks.get(task) for task in supervised]
            try:
                _, per_task = multitask_loss(preds, golds, kinds, task_masks=masks)
            except ValueError as error:
                raise ValueError(f"{error} (task i is the i-th of {supervised})") from error
            losses.update(zip(supervised, per_task.unbind()))
        return torch.stack([losses[task].float() for task in self.heads])

    def labelled_tasks(self, output: ModelOutput, targets: Mapping[str, torch.Tensor],
                       task_masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Bool ``[T]`` in task order: True where the task has at least one labelled sample in the batch.

        A task is absent when it has no target, when its task mask is all False, when every
        cross-entropy target is the ignore index (-100), or (contrastive) when no sample has
        both of its modalities. The weightings leave absent tasks out of the step. No host sync.
        """
        task_masks = dict(task_masks or {})
        self._check_task_keys(targets, task_masks)
        flags = []
        for task, head in self.heads.items():
            prediction, mask = output.predictions[task], task_masks.get(task)
            if head.loss_kind == "contrastive":
                first, second = head.modalities
                labelled = _present_or_false(output.present, first, prediction) & _present_or_false(
                    output.present, second, prediction)
            elif task in targets:
                target = targets[task]
                labelled = torch.ones(target.shape[0], dtype=torch.bool, device=prediction.device)
                if head.loss_kind == "cross_entropy":
                    labelled = labelled & (target.to(prediction.device) != -100)
            else:
                flags.append(torch.zeros((), dtype=torch.bool, device=prediction.device))
                continue
            if mask is not None:
                labelled = labelled & mask.to(device=labelled.device, dtype=torch.bool)
            flags.append(labelled.any())
        return torch.stack(flags)

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

    def _presence(self, inputs: Mapping[str, Any], present: Mapping[str, torch.Tensor] | None,
                  batch: int) -> dict[str, torch.Tensor]:
        device = next(self.parameters()).device
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
        missing_all = ~torch.stack(list(result.values())).any(dim=0)
        if bool(missing_all.any()):
            rows = missing_all.nonzero().squeeze(1).tolist()
            raise ValueError(f"samples {rows[:10]} have no modality present; every sample needs at least one")
        return result

    def _drop_modalities(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Modality dropout: hide each present modality with probability p, keeping one per sample."""
        names = sorted(present)
        stacked = torch.stack([present[m] for m in names], dim=1)  # [B, M]
        kept = stacked & (torch.rand(stacked.shape, device=stacked.device) >= self.modality_dropout)
        empty = ~kept.any(dim=1)
        if bool(empty.any()):  # restore one random originally-present modality for those samples
            scores = torch.rand(stacked.shape, device=stacked.device).masked_fill(~stacked, -1.0)
            restore = torch.zeros_like(stacked).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
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
