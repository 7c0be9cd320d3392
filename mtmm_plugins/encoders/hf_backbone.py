"""A Hugging Face transformers model (``AutoModel``) as an encoder for text, audio or images (the
optional extra ``mtmm[hf]``), read from a local ``save_pretrained`` folder."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from mtmm_core.contracts import EncoderOutput, masked_mean
from mtmm_core.errors import UsageError
from mtmm_core.pretrained import TextTokenizer, load_tokenizer, local_folder, require
from mtmm_core.transfer import numbered_layer_depths
from mtmm_kernels._validate import value_checks_enabled
from mtmm_plugins.checks import check_int
from mtmm_plugins.encoders.common import blank, check_lengths, check_shape, prefix_mask, sample_presence

OUTPUTS = ("pooled", "tokens")
POOLINGS = ("mean", "cls", "pooler")
INPUTS = ("input_ids", "input_values", "pixel_values")  # the models' main_input_name this encoder feeds


class HFEncoder(nn.Module):
    """A Hugging Face AutoModel from a local folder: text, audio or images become its hidden states or one vector.

    Text ids, a waveform or an image go through the model; its last hidden states (tokens) or one pooled
    vector are projected to ``dim``.

    Parameters:

    - ``path``: a local folder written by ``save_pretrained`` (``config.json`` and the weights); read with
      ``AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)``. Or ``config``: a
      mapping ``{model_type: bert, hidden_size: 64, ...}`` for a randomly initialised model of that
      architecture (``AutoConfig.for_model``). Exactly one of the two.
    - ``output``: ``tokens`` gives the last hidden states ``[B, L, dim]`` with their mask (for the attention
      fusions); ``pooled`` one token ``[B, 1, dim]``, by ``pooling``: ``mean`` over the valid tokens,
      ``cls`` (the first token) or ``pooler`` (the model's own ``pooler_output``, e.g. BERT's).
    - ``dim``: the width of the projection after the model (the model's ``dim`` by default);
      ``projection: false`` keeps the model's ``hidden_size`` and ignores ``dim``.
    - ``tokenizer``: a local tokenizer folder for string input (default: ``path``, when it holds one);
      ``max_len``: strings are cut after that many tokens.

    ``forward(x, lengths [B] | None)`` by the model's input (``main_input_name``):

    - text (``input_ids``): ids ``[B, T]`` (long; the first ``lengths[b]`` valid, else every id but the pad
      id), a mapping ``{"input_ids", "attention_mask"[, "token_type_ids"]}``, or a list of ``str``.
    - audio (``input_values``): a waveform ``[B, T]`` or ``[B, T, 1]`` float (the first ``lengths[b]``
      samples valid), or a mapping ``{"input_values", "attention_mask"}``; the tokens are the model's
      frames, their mask from the model's own frame count (``_get_feat_extract_output_lengths``).
    - images (``pixel_values``): ``[B, C, H, W]`` float; ``lengths`` 0 marks an absent sample.

    Returns ``EncoderOutput(tokens [B, L, dim], mask [B, L] bool)``: padding never reaches a valid token (ids
    past the valid ones become the pad id, samples become 0.0, before the model), tokens at padding are
    zeros, and a sample with no valid input gives an all-False row. The model's parameters are under
    ``backbone.``: ``transfer.freeze: [encoders.<modality>.backbone]`` freezes it, ``transfer.layer_decay``
    decays its learning rate layer by layer (:meth:`layer_depths`).
    """

    def __init__(self, *, path: str | None = None, config: dict[str, Any] | None = None,
                 output: Literal["pooled", "tokens"] = "tokens", pooling: Literal["mean", "cls", "pooler"] = "mean",
                 dim: int = 128, projection: bool = True, tokenizer: str | None = None, max_len: int = 512):
        super().__init__()
        check_int("dim", dim)
        check_int("max_len", max_len)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if (path is None) == (config is None):
            raise ValueError("give exactly one of path (a local save_pretrained folder) and config (a mapping with "
                             f"model_type, for random weights), got path={path!r} and config={config!r}")
        if config is not None and (not isinstance(config, dict) or not isinstance(config.get("model_type"), str)):
            raise ValueError(f"config must be a mapping with model_type (e.g. bert) and its settings, got {config!r}")
        folder = None if path is None else local_folder(path, "path")
        transformers = require("transformers", "the hf encoder")
        if folder is not None:
            try:
                self.backbone = transformers.AutoModel.from_pretrained(
                    str(folder), local_files_only=True, trust_remote_code=False)
            except (OSError, ValueError, KeyError) as error:
                raise UsageError(f"path: transformers cannot load a model from {folder}: {error}") from error
        else:
            settings = dict(config)
            model_type = settings.pop("model_type")
            try:
                model_config = transformers.AutoConfig.for_model(model_type, **settings)
            except ValueError as error:
                raise ValueError(f"config.model_type: {error}") from error
            self.backbone = transformers.AutoModel.from_config(model_config)
        self.input_name = getattr(self.backbone, "main_input_name", "input_ids")
        if self.input_name not in INPUTS:
            raise ValueError(f"path: {type(self.backbone).__name__} takes {self.input_name}; the hf encoder feeds "
                             f"{', '.join(INPUTS)}")
        model_config = self.backbone.config
        self.hidden_size = _hidden_size(model_config)
        if pooling == "pooler" and output == "pooled" and getattr(self.backbone, "pooler", "absent") is None:
            raise ValueError(f"pooling: pooler, but this {type(self.backbone).__name__} was saved without a pooler; "
                             "use mean or cls")
        self.output, self.pooling, self.max_len = output, pooling, max_len
        self.pad_id = getattr(model_config, "pad_token_id", None)
        self.vocab_size = getattr(model_config, "vocab_size", None)
        positions = getattr(model_config, "max_position_embeddings", None)
        self.max_positions = positions if isinstance(positions, int) and positions > 0 else None
        self.tokenizer: TextTokenizer | None = None
        if self.input_name == "input_ids":
            tokenizer_folder = tokenizer or (str(folder) if folder is not None and _holds_tokenizer(folder) else None)
            if tokenizer_folder is not None:
                self.tokenizer = load_tokenizer(tokenizer_folder, max_len)
        elif tokenizer is not None:
            raise ValueError(f"tokenizer: this model takes {self.input_name}, not text")
        self.takes_attention_mask = "attention_mask" in inspect.signature(self.backbone.forward).parameters
        self.projection = nn.Linear(self.hidden_size, dim) if projection else nn.Identity()
        self.out_dim = dim if projection else self.hidden_size

    # -- the contract ---------------------------------------------------------------------------------
    def forward(self, x: Any, lengths: torch.Tensor | None = None) -> EncoderOutput:
        tokens, mask = self.features(x, lengths)
        return EncoderOutput(blank(self.projection(tokens), mask), mask)

    def features(self, x: Any, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """The model's output before the projection: ``tokens [B, L, hidden_size]`` (``L = 1`` pooled) and
        ``mask [B, L]`` bool."""
        device = next(self.backbone.parameters()).device
        inputs, valid = self._model_inputs(x, lengths, device)
        # A sample with no valid position still attends to its first one (padding), so every row stays
        # finite; its tokens are masked out below.
        attend = valid.clone()
        if attend.dim() == 2 and attend.shape[1] > 0:
            attend[:, 0] |= ~valid.any(dim=1)
        if self.takes_attention_mask and self.input_name != "pixel_values":
            inputs["attention_mask"] = attend.long()
        result = self.backbone(**inputs, return_dict=True)
        hidden = result.last_hidden_state
        if hidden.dim() == 4:  # a convolutional vision model: [B, C, H, W]
            hidden = rearrange(hidden, "b c h w -> b (h w) c")
        mask = self._output_mask(valid, hidden.shape[1])
        hidden = blank(hidden, mask)
        if self.output == "tokens":
            return EncoderOutput(hidden, mask)
        present = mask.any(dim=1, keepdim=True)
        if self.pooling == "mean":
            pooled = masked_mean(hidden, mask)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = getattr(result, "pooler_output", None)
            if pooled is None:
                raise ValueError(f"pooling: {type(self.backbone).__name__} gives no pooler_output; use mean or cls")
            pooled = pooled.reshape(pooled.shape[0], -1)
        return EncoderOutput(blank(rearrange(pooled, "b d -> b 1 d"), present), present)

    def example_batch(self, batch_size: int) -> tuple[Any, torch.Tensor | None]:
        """A random valid input for the model's kind (for ``mtmm check-plugin``)."""
        if self.input_name == "input_ids":
            steps = 6
            ids = torch.randint(1, max(2, min(self.vocab_size or 100, 100)), (batch_size, steps))
            return ids, torch.randint(1, steps + 1, (batch_size,))
        if self.input_name == "input_values":
            samples = 800
            return torch.randn(batch_size, samples), torch.randint(samples // 2, samples + 1, (batch_size,))
        config = self.backbone.config
        side = getattr(config, "image_size", 32)
        side = side[0] if isinstance(side, (list, tuple)) else side
        return torch.randn(batch_size, getattr(config, "num_channels", 3), side, side), None

    def check_values(self, x: Any, lengths: torch.Tensor | None = None) -> None:
        """The value checks of ``forward`` (lengths, ids in range), on tensors wherever they are."""
        self._model_inputs(x, lengths, None)

    def layer_depths(self) -> dict[str, int]:
        """``{parameter name: layer group}`` for ``transfer.layer_decay``: the embeddings (everything before
        the first numbered layer) 0, layer ``i`` of ``encoder.layer.i`` (``layers``, ``h``, ``block``) ``i + 1``,
        what follows the last layer (final norm, pooler) ``N + 1``; the projection is left out."""
        depths = numbered_layer_depths([name for name, _ in self.backbone.named_parameters()])
        return {f"backbone.{name}": group for name, group in depths.items()}

    # -- inputs ---------------------------------------------------------------------------------------
    def _model_inputs(self, x: Any, lengths: torch.Tensor | None,
                      device: torch.device | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({argument: tensor}, valid [B, T] bool)`` for the model; ``device=None`` only checks."""
        if self.input_name == "pixel_values":
            check_shape(x, "image", ("B", "C", "H", "W"))
            present = sample_presence(lengths, x.shape[0], x.device)
            present = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if present is None else present
            return {"pixel_values": _to(blank(x, present), device)}, present[:, None]
        extra: dict[str, torch.Tensor] = {}
        given_mask = None
        if isinstance(x, Mapping):
            if self.input_name not in x:
                raise ValueError(f"expected a mapping with {self.input_name!r}, got keys {sorted(x)}")
            extra = {key: value for key, value in x.items() if key not in (self.input_name, "attention_mask")}
            given_mask = x.get("attention_mask")
            x = x[self.input_name]
        if self.input_name == "input_ids":
            if not isinstance(x, torch.Tensor):
                x, given_mask = self._tokenize(x)
            values, valid = self._check_ids(x, lengths, given_mask)
            values = torch.where(valid, values, self.pad_id or 0)
        else:
            if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[2] == 1:
                x = rearrange(x, "b t 1 -> b t")
            check_shape(x, "waveform", ("B", "T"))
            if not x.is_floating_point():
                raise ValueError(f"expected a floating-point waveform [B, T], got dtype {x.dtype}")
            valid = self._valid(x, lengths, given_mask)
            values = torch.where(valid, x, 0.0)
        inputs = {self.input_name: _to(values, device)}
        inputs.update({key: _to(value, device) for key, value in extra.items()})
        return inputs, _to(valid, device)

    def _tokenize(self, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"expected text as ids [B, T], a mapping with input_ids or a list of str, "
                             f"got {type(texts).__name__}")
        if self.tokenizer is None:
            raise ValueError("got strings, but this model's folder holds no tokenizer: set the encoder's "
                             "tokenizer to a local tokenizer folder, or pass ids [B, T]")
        encoded = self.tokenizer(texts)
        return torch.from_numpy(encoded["input_ids"]), torch.from_numpy(encoded["attention_mask"]).bool()

    def _check_ids(self, ids: torch.Tensor, lengths: torch.Tensor | None,
                   given_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(ids, "ids", ("B", "T"))
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"expected integer ids [B, T], got dtype {ids.dtype}")
        if lengths is None and given_mask is None and self.pad_id is not None:
            valid = ids != self.pad_id
        else:
            valid = self._valid(ids, lengths, given_mask)
        if self.max_positions is not None and ids.shape[1] > self.max_positions:
            if valid[:, self.max_positions:].any():
                longest = int(valid.sum(dim=1).max())
                raise ValueError(f"got {longest} ids in a sample, but {type(self.backbone).__name__} takes at most "
                                 f"{self.max_positions} (its max_position_embeddings); cut the texts to that many "
                                 f"tokens: max_len: {self.max_positions} for a table's text column (docs/tables.md)")
            ids, valid = ids[:, : self.max_positions], valid[:, : self.max_positions]  # padding only
        if value_checks_enabled() and self.vocab_size:
            bad = valid & ((ids < 0) | (ids >= self.vocab_size))
            if bad.any():
                raise ValueError(f"expected ids in [0, {self.vocab_size - 1}] (the model's vocab_size), "
                                 f"got {int(ids[bad][0])}")
        return ids, valid

    @staticmethod
    def _valid(x: torch.Tensor, lengths: torch.Tensor | None, given_mask: torch.Tensor | None) -> torch.Tensor:
        """Bool ``[B, T]``: the positions within ``lengths`` and set in ``given_mask`` (each optional)."""
        batch, steps = x.shape[:2]
        valid = torch.ones(batch, steps, dtype=torch.bool, device=x.device)
        if lengths is not None:
            valid = prefix_mask(check_lengths(lengths, batch, steps).to(x.device), steps)
        if given_mask is not None:
            check_shape(given_mask, "attention_mask", (batch, steps))
            valid = valid & given_mask.to(x.device).bool()
        return valid

    def _output_mask(self, valid: torch.Tensor, steps: int) -> torch.Tensor:
        """The mask of the model's ``steps`` output tokens from the input's ``valid`` ``[B, T]``."""
        if valid.shape[1] == steps:
            return valid
        if self.input_name == "pixel_values":
            return valid[:, :1].expand(-1, steps)
        counts = valid.sum(dim=1)
        frames = getattr(self.backbone, "_get_feat_extract_output_lengths", None)
        if frames is None:
            raise ValueError(f"{type(self.backbone).__name__} gave {steps} tokens for {valid.shape[1]} inputs and "
                             "cannot say which are valid; use output: pooled with pooling: cls")
        frame_counts = torch.where(counts > 0, frames(counts), 0).clamp(max=steps)
        return prefix_mask(frame_counts.to(valid.device), steps)


def _hidden_size(config: Any) -> int:
    """The width of the model's last hidden states: ``hidden_size``, else the last of ``hidden_sizes`` (CNNs)."""
    width = getattr(config, "hidden_size", None)
    if not isinstance(width, int):
        sizes = getattr(config, "hidden_sizes", None)
        width = sizes[-1] if isinstance(sizes, (list, tuple)) and sizes else None
    if not isinstance(width, int):
        raise ValueError(f"path: cannot tell the width of a {type(config).__name__} (no hidden_size)")
    return width


def _holds_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def _to(value: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    return value if device is None else value.to(device, non_blocking=True)
