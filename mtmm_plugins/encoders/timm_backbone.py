"""Any timm image model as an encoder (the optional extra ``mtmm[timm]``), weights from a local file."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from mtmm_core.contracts import EncoderOutput
from mtmm_core.errors import UsageError
from mtmm_core.pretrained import require
from mtmm_core.transfer import numbered_layer_depths
from mtmm_plugins.checks import check_int
from mtmm_plugins.encoders.common import blank, check_floating, check_shape, presence_mask, sample_presence

OUTPUTS = ("pooled", "tokens")


class TimmEncoder(nn.Module):
    """Any timm image model, weights from a local file: an image [B, C, H, W] becomes pooled features or tokens.

    The model is any name of ``timm.list_models()``; its global-pooled features (one token) or its
    final feature map (one token per position) are projected to ``dim``.

    Parameters:

    - ``model_name``: a timm model name, e.g. ``resnet18``, ``vit_small_patch16_224``, ``convnext_tiny``.
    - ``pretrained``: ``false`` (random initialisation), the path of a local weights file
      (``.safetensors``, or a torch ``.pth``/``.bin`` read with ``weights_only=True``) loaded through timm's
      own loader (classifier dropped, first convolution adapted to ``in_channels``), or ``true``: timm's
      default weights for the name, from the local Hugging Face cache (filled beforehand; never downloaded).
      Every parameter of the model must be in the file, else it is an error naming the missing ones.
    - ``output``: ``pooled`` gives ``tokens [B, 1, dim]`` (the model's global-pooled pre-logits features);
      ``tokens`` gives ``[B, L, dim]``: one token per position of the final feature map of a CNN
      (``L = h * w``), or the transformer's tokens, prefix (CLS) tokens first.
    - ``dim``: the width of the projection after the backbone (the model's ``dim`` by default);
      ``projection: false`` keeps the backbone's width (``num_features``) and ignores ``dim``.
    - ``in_channels``: image channels; ``image_size``: the side of the (square) images, passed to timm as
      ``img_size`` to a model built for one size (a ViT) and only checked for the others (a CNN takes any
      size); a data set's square images fill it in. ``model_kwargs``: further keyword
      arguments of ``timm.create_model`` (``depth``, ``drop_path_rate``, ...), which must match the weights.

    ``forward(images [B, in_channels, H, W] float, lengths [B] | None)`` returns
    ``EncoderOutput(tokens [B, L, dim], mask [B, L] bool)``: all True except the all-False row of an absent
    sample (length 0), whose image is replaced by zeros before the backbone (its content never matters; a
    BatchNorm backbone in training mode still counts that zero image in its batch statistics).
    Images are used as given: normalise them as the weights expect (e.g. ``normalize: imagenet`` in a
    table build). The backbone's parameters are under ``backbone.``, so ``transfer.freeze:
    [encoders.<modality>.backbone]`` freezes it and ``transfer.layer_decay`` decays its learning rate
    layer by layer (:meth:`layer_depths`, timm's own grouping of the model's layers).
    """

    def __init__(self, *, model_name: str, pretrained: str | bool = False, output: Literal["pooled", "tokens"] = "pooled",
                 dim: int = 128, projection: bool = True, in_channels: int = 3, image_size: int | None = None,
                 model_kwargs: dict[str, Any] | None = None):
        super().__init__()
        check_int("dim", dim)
        check_int("in_channels", in_channels)
        if image_size is not None:
            check_int("image_size", image_size)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a timm model name (str), got {model_name!r}")
        if not isinstance(pretrained, (bool, str, Path)) or (isinstance(pretrained, str) and not pretrained):
            raise ValueError(f"pretrained must be false, true or the path of a local weights file, got {pretrained!r}")
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a mapping of timm.create_model arguments, got {model_kwargs!r}")
        weights = None if isinstance(pretrained, bool) else Path(pretrained).expanduser()
        if weights is not None and not weights.is_file():
            raise UsageError(f"pretrained: no weights file at {str(pretrained)!r} (give a local .safetensors or "
                             ".pth file, or false for random weights)")
        timm = require("timm", "the timm encoder")
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise ValueError(f"model_name: timm has no model {model_name!r}{hint} (see timm.list_models())")
        if pretrained is True:
            weights = cached_weights(model_name, timm)
        self.model_name, self.output, self.in_channels, self.image_size = model_name, output, in_channels, image_size
        arguments = {**(model_kwargs or {}), "num_classes": 0, "in_chans": in_channels}
        if image_size is not None:
            arguments["img_size"] = image_size
        if weights is not None:
            arguments.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
        else:
            arguments["pretrained"] = False
        try:
            try:
                self.backbone = timm.create_model(model_name, **arguments)
            except TypeError as error:
                if "img_size" not in arguments or "img_size" not in str(error):
                    raise
                del arguments["img_size"]  # a model of any image size (a CNN): image_size only checks the input
                self.backbone = timm.create_model(model_name, **arguments)
        except TypeError as error:  # an argument this model does not take (a misspelt model_kwargs key)
            raise ValueError(f"timm model {model_name!r} refused its arguments "
                             f"{sorted(set(arguments) - {'pretrained', 'pretrained_cfg_overlay'})}: {error}") from error
        if weights is not None:
            _require_every_parameter(self.backbone, weights)
        self.num_features = int(self.backbone.num_features)
        self.projection = nn.Linear(self.num_features, dim) if projection else nn.Identity()
        self.out_dim = dim if projection else self.num_features

    def example_batch(self, batch_size: int) -> tuple[torch.Tensor, None]:
        """Random images ``[batch_size, in_channels, S, S]`` (``S = image_size``, else 64)."""
        side = self.image_size or 64
        return torch.randn(batch_size, self.in_channels, side, side), None

    def features(self, images: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """The backbone's output before the projection: ``tokens [B, L, num_features]``, ``mask [B, L]``
        (``L = 1`` for ``output: pooled``)."""
        self._check_images(images)
        present = sample_presence(lengths, images.shape[0], images.device)
        images = blank(images, present)
        if self.output == "pooled":
            tokens = rearrange(self.backbone(images), "b d -> b 1 d")
        else:
            tokens = self._as_tokens(self.backbone.forward_features(images))
        mask = presence_mask(present, tokens.shape[0], tokens.shape[1], tokens.device)
        return EncoderOutput(tokens, mask)

    def forward(self, images: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        tokens, mask = self.features(images, lengths)
        return EncoderOutput(blank(self.projection(tokens), mask), mask)

    def check_values(self, images: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """The value checks of ``forward`` (lengths >= 0), on tensors wherever they are."""
        check_shape(images, "image", ("B", self.in_channels, "H", "W"))
        sample_presence(lengths, images.shape[0], images.device)

    def layer_depths(self) -> dict[str, int]:
        """``{parameter name: layer group}``, 0 nearest the input, for ``transfer.layer_decay``: timm's own
        grouping (``group_matcher``: stem, then each block or stage, then the final norm); the projection
        is left out (it trains at the full learning rate)."""
        matcher = getattr(self.backbone, "group_matcher", None)
        if matcher is not None:
            from timm.models import group_parameters

            groups = group_parameters(self.backbone, matcher(coarse=False), reverse=True)
        else:
            groups = numbered_layer_depths([name for name, _ in self.backbone.named_parameters()])
        return {f"backbone.{name}": int(group) for name, group in groups.items()}

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.image_size or "H"
        check_shape(images, "image", ("B", self.in_channels, size, self.image_size or "W"))
        check_floating(images, "image")

    def _as_tokens(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``forward_features``' output as ``[B, L, num_features]``: NCHW and NHWC maps flattened row by row."""
        if feature_map.dim() == 3:
            return feature_map
        if feature_map.dim() == 4:
            layout = getattr(self.backbone, "output_fmt", None)
            layout = getattr(layout, "name", layout)  # timm's Format enum or a plain string
            if layout == "NHWC" or (layout is None and feature_map.shape[1] != self.num_features):
                return rearrange(feature_map, "b h w c -> b (h w) c")
            return rearrange(feature_map, "b c h w -> b (h w) c")
        raise ValueError(f"timm model {self.model_name!r} gave features of shape {list(feature_map.shape)}; "
                         "output: tokens needs [B, L, D] or a feature map [B, C, H, W] (use output: pooled)")


def cached_weights(model_name: str, timm: Any) -> Path:
    """The file of ``model_name``'s default timm weights in the local Hugging Face cache (filled beforehand,
    e.g. by ``huggingface-cli download timm/resnet18.a1_in1k``); nothing is downloaded. :class:`UsageError`
    naming the repository when the cache lacks it."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(model_name)
    hub_id = getattr(config, "hf_hub_id", None)
    if not hub_id:
        raise UsageError(f"pretrained: timm has no default weights on the Hugging Face hub for {model_name!r}; "
                         "give the path of a local weights file")
    names = [config.hf_hub_filename] if getattr(config, "hf_hub_filename", None) else []
    for filename in [*names, "model.safetensors", "pytorch_model.bin"]:
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    raise UsageError(f"pretrained: true, but the weights of {hub_id} are not in the local Hugging Face cache "
                     f"(nothing is downloaded at run time): fill it first with `huggingface-cli download {hub_id}`, "
                     "or give the path of a local weights file")


def _require_every_parameter(backbone: nn.Module, weights: Path) -> None:
    """Raise :class:`UsageError` unless the weights file holds every parameter of ``backbone`` (timm's loader
    only logs the ones it lacks, which would leave them silently random)."""
    from timm.models import load_state_dict

    stored = set(load_state_dict(str(weights)))  # safetensors, or torch.load(weights_only=True)
    missing = [name for name, _ in backbone.named_parameters() if name not in stored]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(f"pretrained: {weights} lacks {len(missing)} of the parameters of timm model "
                         f"{backbone.pretrained_cfg.get('architecture', '')!r}: {shown}. Is it the weights "
                         f"file of this model (and model_kwargs)?")
