"""What every built-in fusion shares: argument checks and averaging over present modalities.

A fusion receives three dicts keyed by modality (see docs/plugins.md):
``tokens[m]`` ``[B, L_m, D_m]``, ``masks[m]`` ``[B, L_m]`` (bool, True = valid token) and
``present[m]`` ``[B]`` (bool, True = sample has modality ``m``). The tokens at
masked positions and of a sample without ``m`` are arbitrary (even inf/NaN). Masks
replace, never multiply: every built-in fusion starts with :meth:`Fusion.valid_inputs`,
which replaces those tokens by zeros with ``torch.where`` before any arithmetic (a
multiplication by zero would let inf/NaN through, into the output and the gradients),
and then swaps in a learned placeholder for an absent modality or leaves it out of
that sample's combination, again with ``torch.where``.
"""

from __future__ import annotations

import torch
from torch import nn

from mtmm_kernels._validate import value_checks_enabled
from mtmm_plugins.checks import check_int


class Fusion(nn.Module):
    """Base class of the built-in fusions: checks the wiring and the inputs of ``forward``.

    Subclasses implement ``forward(tokens, masks, present) -> [B, out_dim]`` and call
    ``self.valid_inputs(...)`` first. ``self.modalities`` is ``sorted(input_dims)``:
    every fusion iterates modalities in that order, so results do not depend on the
    order of the dicts.
    """

    def __init__(self, *, input_dims: dict[str, int], dim: int):
        super().__init__()
        if not isinstance(input_dims, dict) or not input_dims:
            raise ValueError(f"input_dims must be a non-empty dict of modality -> width, got {input_dims!r}")
        for name, width in input_dims.items():
            if not isinstance(name, str) or not name or "." in name or hasattr(nn.ModuleDict(), name):
                raise ValueError(
                    f"modality name {name!r} cannot name a submodule: use a non-empty string "
                    "without '.' that is not an nn.Module attribute"
                )
            check_int(f"input_dims[{name!r}]", width)
        check_int("dim", dim)
        self.input_dims = dict(input_dims)
        self.modalities = sorted(input_dims)
        self.dim = dim
        self.out_dim = dim

    def batch_modalities(
        self,
        tokens: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
    ) -> list[str]:
        """Check the inputs of ``forward``; return the batch's modalities in sorted order.

        Raises ValueError naming the modality and dimension when a key is unknown or
        missing from one of the dicts, a shape or dtype is wrong, the batch sizes
        disagree, or (while value checks are on: it reads ``present`` on the host) some
        sample has no modality present.
        """
        names = set(tokens)
        if not names:
            raise ValueError(f"fusion got no modality; expected a non-empty subset of {self.modalities}")
        unknown = sorted(names - set(self.input_dims))
        if unknown:
            raise ValueError(f"fusion got unknown modality {unknown[0]!r}; expected a subset of {self.modalities}")
        for label, other in (("masks", masks), ("present", present)):
            if set(other) != names:
                raise ValueError(
                    f"fusion {label} has modalities {sorted(other)} but tokens has {sorted(names)}; "
                    "tokens, masks and present must have the same keys"
                )
        modalities = [m for m in self.modalities if m in names]
        batch: int | None = None
        for m in modalities:
            batch = self._check_modality(m, tokens[m], masks[m], present[m], batch)
        if value_checks_enabled() and not torch.stack([present[m] for m in modalities]).any(dim=0).all():
            raise ValueError("fusion got a sample with no modality present; every sample needs at least one")
        return modalities

    def valid_inputs(
        self,
        tokens: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
    ) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Check the inputs (:meth:`batch_modalities`); return the batch's modalities, the tokens and the masks.

        The returned ``masks[m]`` is ``masks[m] & present[m][:, None]`` (the valid tokens of
        the samples that have ``m``), and the returned ``tokens[m]`` holds zeros everywhere
        else, put there by ``torch.where``: whatever the caller left at a padded position or
        in an absent sample (even inf/NaN) reaches neither the output nor a gradient.
        """
        modalities = self.batch_modalities(tokens, masks, present)
        valid = {m: masks[m] & present[m][:, None] for m in modalities}
        blanked = {m: torch.where(valid[m][..., None], tokens[m], 0.0) for m in modalities}
        return modalities, blanked, valid

    def _check_modality(
        self, m: str, tokens: torch.Tensor, mask: torch.Tensor, present: torch.Tensor, batch: int | None
    ) -> int:
        """Raise ValueError unless ``m``'s tensors fit the contract; return the batch size."""
        width = self.input_dims[m]
        if tokens.dim() != 3:
            raise ValueError(f"{m}: tokens must be [B, L, {width}], got shape {list(tokens.shape)}")
        if tokens.shape[2] != width:
            raise ValueError(f"{m}: token width (dim 2) must be {width} (input_dims), got {tokens.shape[2]}")
        batch = tokens.shape[0] if batch is None else batch
        if tokens.shape[0] != batch:
            raise ValueError(
                f"{m}: batch size (dim 0) must be {batch} like the other modalities, got {tokens.shape[0]}"
            )
        expected_mask = (batch, tokens.shape[1])
        if mask.dtype != torch.bool or tuple(mask.shape) != expected_mask:
            raise ValueError(
                f"{m}: mask must be bool {list(expected_mask)}, got {mask.dtype} {list(mask.shape)}"
            )
        if present.dtype != torch.bool or tuple(present.shape) != (batch,):
            raise ValueError(f"{m}: present must be bool [{batch}], got {present.dtype} {list(present.shape)}")
        return batch


def present_mean(features: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
    """Average ``features[m]`` ``[B, D]`` over the modalities present per sample: ``[B, D]``.

    An absent modality's row is left out with ``torch.where``, so its value (even
    inf/NaN) never reaches the result. ``features`` must not be empty.
    """
    names = list(features)
    stacked = torch.stack([features[m] for m in names])  # [M, B, D]
    keep = torch.stack([present[m] for m in names])[:, :, None]  # [M, B, 1]
    total = torch.where(keep, stacked, 0.0).sum(dim=0)
    return total / keep.sum(dim=0).clamp_min(1).to(total.dtype)
