"""What each kind of component receives and returns, as typing Protocols (docs/plugins.md explains
every field; ``mtmm_core.testing.check_component`` checks a registered component against them).

Shapes: ``B`` batch, ``L`` tokens, ``D`` width, ``T`` tasks, ``P`` gradient entries. A factory is
called with keyword arguments: the spec's parameters plus the wiring named in each Protocol.
Base classes that do the checks for a weighting are in :mod:`mtmm_core.weighting_bases`.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch


class EncoderOutput(NamedTuple):
    """An encoder's result: ``tokens`` ``[B, L, D]`` and ``mask`` ``[B, L]`` (bool, True = valid)."""

    tokens: torch.Tensor
    mask: torch.Tensor


class Batch(NamedTuple):
    """One batch from a data set split.

    ``inputs`` modality -> batch; ``lengths`` modality -> ``[B]`` valid lengths;
    ``targets`` task -> target; ``present`` modality -> bool ``[B]`` (None = all
    present); ``task_masks`` task -> bool ``[B]`` (None = every sample labelled).
    """

    inputs: dict
    lengths: dict
    targets: dict
    present: dict | None = None
    task_masks: dict | None = None


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` ``[B, L, D]`` over valid positions of ``mask`` ``[B, L]``: ``[B, D]``.

    A row with no valid position gives zeros (never NaN).
    """
    total = torch.where(mask.unsqueeze(-1), tokens, 0.0).sum(dim=1)  # replace, never multiply: 0 * NaN is NaN
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(total.dtype)
    return total / count


@runtime_checkable
class Encoder(Protocol):
    """``register_encoders``. Factory ``(*, dim: int = 128, **params)``.

    ``forward(x, lengths [B] | None) -> EncoderOutput(tokens [B, L, out_dim], mask [B, L] bool)``;
    ``x`` is one modality's batch in the form the encoder documents. Optional
    ``example_batch(batch_size) -> (x, lengths | None)``: a random valid input, which
    ``mtmm check-plugin`` needs to run the encoder.
    """

    out_dim: int

    def __call__(self, x: Any, lengths: torch.Tensor | None = None) -> EncoderOutput: ...


@runtime_checkable
class Fusion(Protocol):
    """``register_fusions``. Factory ``(*, input_dims: dict[str, int], dim: int = 128, **params)``.

    ``forward(tokens {m: [B, L_m, D_m]}, masks {m: [B, L_m] bool}, present {m: [B] bool}) -> [B, out_dim]``
    over any non-empty subset of the modalities; an absent sample's tokens must not count.
    """

    out_dim: int

    def __call__(self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                 present: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class Architecture(Protocol):
    """``register_architectures``. Factory ``(*, in_dim: int, tasks: list[str], **params)``.

    ``forward(x [B, in_dim]) -> {task: [B, out_dim]}``; optional ``regularization() -> []``.
    """

    out_dim: int

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Head(Protocol):
    """``register_heads``. Factory ``(*, in_dim: int, **params)`` (may accept ``modality_dims``).

    ``forward(x [B, in_dim]) -> prediction [B, ...]``; with ``uses_modalities = True`` it is called as
    ``forward(x, pooled={m: [B, D_m]}, present={m: [B] bool})``. ``loss_kind`` names a registered
    loss, ``metrics`` registered metrics; optional ``modalities``: the modalities a sample needs to count.
    """

    loss_kind: str
    metrics: tuple[str, ...]

    def __call__(self, x: torch.Tensor, **modality_features: Any) -> torch.Tensor: ...


@runtime_checkable
class Weighting(Protocol):
    """``register_weightings``. Factory ``(*, tasks: list[str], **params)``, an ``nn.Module``.

    ``forward(losses [T], present [T] bool | None) -> total []``; ``weights() -> [T]``; optional
    ``after_step(losses, present=)`` and ``end_epoch(train_losses, present=)``.
    """

    def __call__(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor: ...

    def weights(self) -> torch.Tensor: ...


@runtime_checkable
class GradientLevelWeighting(Weighting, Protocol):
    """A :class:`Weighting` with ``gradient_level = True``, ``gradient_mode`` ("representation" or
    "parameters") and ``combine(grads [T, P], losses [T], present [T] | None) -> [P]``."""

    gradient_level: bool
    gradient_mode: str

    def combine(self, grads: torch.Tensor, losses: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Split(Protocol):
    """One split of a data set: ``len(split)`` samples, ``batch(rows int64 [n]) -> Batch`` of those rows."""

    def __len__(self) -> int: ...

    def batch(self, rows: np.ndarray) -> Batch: ...


@runtime_checkable
class Dataset(Protocol):
    """``register_datasets``. Factory ``(**params)``, the config's ``data`` section.

    ``modalities {name: {"kind", "shape"}}``, ``tasks {name: {"kind", ...}}``, ``splits`` with
    ``"train"``, ``"validation"`` and ``"test"``.
    """

    modalities: Mapping[str, Mapping[str, Any]]
    tasks: Mapping[str, Mapping[str, Any]]
    splits: Mapping[str, Split]


@runtime_checkable
class Loss(Protocol):
    """``register_losses``: ``loss(prediction [B, ...], target [B, ...] | None, mask [B] bool) -> []``,
    the mean over the samples where ``mask`` is True, 0 (with a graph) when there is none.

    Metadata: ``needs_target`` (default True), ``ignore_index``, and ``example(batch_size) ->
    (prediction, target)``: a random valid input, which ``mtmm check-plugin`` needs to run the loss.
    """

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor | None,
                 mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Metric(Protocol):
    """``register_metrics``: ``metric(prediction [N, ...], target [N, ...] | None) -> float`` on a
    whole split; metadata ``higher_is_better`` (bool)."""

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor | None) -> float: ...


#: The Protocol each kind of component must follow.
CONTRACTS: dict[str, type] = {"encoder": Encoder, "fusion": Fusion, "architecture": Architecture, "head": Head,
                              "weighting": Weighting, "dataset": Dataset, "loss": Loss, "metric": Metric}
