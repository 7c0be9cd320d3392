"""Pretrained models from local files: the optional extras ``timm`` and ``hf`` behind the encoders of the
same names, and the Hugging Face tokenizer and feature extractor a data build can call.

Nothing here downloads: a model, tokenizer or feature extractor is read from a local folder (a
``save_pretrained`` folder) or file, and nothing pickled is executed (``trust_remote_code`` is off,
torch files are read with ``weights_only=True``). The libraries are imported only when a function
needs them, so mtmm and its registry work without the extras; a missing one is a
:class:`~mtmm_core.errors.UsageError` naming the extra to install.

For a data build::

    tokenize = load_tokenizer("models/bert-small", max_len=128)
    ids = tokenize(["a first text", "a second"])   # {"input_ids": int64 [N, T], "attention_mask": int64 [N, T]}

    extract = load_feature_extractor("models/wav2vec2-small")
    values = extract([samples_a, samples_b])        # {"input_values": float32 [N, T], "attention_mask": int64 [N, T]}
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mtmm_core.errors import UsageError

#: The extra that provides each optional module (``pip install "mtmm[<extra>]"``).
EXTRAS = {"timm": "timm", "transformers": "hf"}


def install_hint(module: str) -> str:
    """The command that installs the extra providing ``module``: ``pip install "mtmm[hf]"``."""
    return f'pip install "mtmm[{EXTRAS.get(module, module)}]"'


def require(module: str, what: str) -> Any:
    """Import ``module`` (``"timm"`` or ``"transformers"``) for ``what`` needs it; a :class:`UsageError`
    naming the extra to install when it is missing or fails to import (timm without a working torchvision)."""
    try:
        return importlib.import_module(module)
    except Exception as error:  # ImportError, or an installed package that cannot load (e.g. torchvision's ops)
        detail = "" if isinstance(error, ModuleNotFoundError) and error.name == module else \
            f" ({module} is installed but failed to import: {type(error).__name__}: {error}; see docs/pretrained.md)"
        raise UsageError(f"{what} needs the {module} package: {install_hint(module)}{detail}") from error


def extra_available(module: str) -> bool:
    """Whether ``module`` imports here (an installed package that fails to import counts as absent)."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def local_folder(path: Any, what: str, must_hold: str = "config.json") -> Path:
    """``path`` as a local folder holding ``must_hold``; a :class:`UsageError` naming ``what`` otherwise.

    Hub names (``bert-base-uncased``) are refused here: nothing is downloaded at run time.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise UsageError(f"{what}: expected the path of a local folder, got {path!r}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{what}: {str(path)!r} is not a local folder. Give the folder a Hugging Face "
                         "save_pretrained() wrote (models are never downloaded at run time)")
    if must_hold and not (folder / must_hold).is_file():
        raise UsageError(f"{what}: {folder} holds no {must_hold}; give the folder save_pretrained() wrote")
    return folder


class TextTokenizer:
    """A Hugging Face tokenizer as ``tokenize(texts) -> {"input_ids", "attention_mask"}``.

    ``texts``: a sequence of ``N`` strings. Returns int64 arrays ``[N, T]``: each text's ids (special
    tokens included) cut at ``max_len`` and padded with the tokenizer's pad id to ``T``, the longest
    encoded text (``pad_to_max=True``: always ``max_len``); ``attention_mask`` is 1 at real tokens, 0 at
    padding. ``vocab_size`` is the number of ids the tokenizer can give; ``pad_id`` its padding id.
    """

    def __init__(self, tokenizer: Any, max_len: int, pad_to_max: bool = False):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.pad_to_max = pad_to_max
        self.vocab_size = len(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise ValueError("expected a list of str to tokenize")
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_len)["input_ids"]
        width = self.max_len if self.pad_to_max else max([1, *(len(ids) for ids in encoded)])
        input_ids = np.full((len(encoded), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def load_tokenizer(path: str | Path, max_len: int = 512, pad_to_max: bool = False) -> TextTokenizer:
    """The tokenizer saved in the local folder ``path`` (``AutoTokenizer.from_pretrained``), as a
    :class:`TextTokenizer` callable ``list[str] -> {"input_ids": int64 [N, T], "attention_mask": int64 [N, T]}``."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len: expected an integer >= 1, got {max_len!r}")
    folder = local_folder(path, "tokenizer", must_hold="")
    transformers = require("transformers", f"the tokenizer in {folder}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                               trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"tokenizer: {folder} holds no tokenizer transformers can read: {error}") from error
    return TextTokenizer(tokenizer, max_len, pad_to_max)


def read_feature_extractor(path: str | Path) -> Any:
    """The transformers feature extractor saved in the local folder ``path`` (``AutoFeatureExtractor``,
    local files only, no remote code); a :class:`UsageError` when the folder holds none."""
    folder = local_folder(path, "feature_extractor", must_hold="preprocessor_config.json")
    transformers = require("transformers", f"the feature extractor in {folder}")
    try:
        return transformers.AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True,
                                                                 trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"feature_extractor: {folder} holds no feature extractor transformers can read: "
                         f"{error}") from error


def load_feature_extractor(path: str | Path, sampling_rate: int | None = None
                           ) -> Callable[[Sequence[np.ndarray]], dict[str, np.ndarray]]:
    """The feature extractor saved in the local folder ``path`` (``AutoFeatureExtractor.from_pretrained``)
    as a callable: a list of ``N`` mono waveforms (float ``[samples_i]``, at ``sampling_rate``, default the
    extractor's) -> ``{"input_values" or "input_features": float32 [N, T, ...], "attention_mask": int64 [N, T]}``,
    padded to the longest."""
    extractor = read_feature_extractor(path)
    rate = sampling_rate or extractor.sampling_rate

    def extract(waveforms: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        out = extractor([np.asarray(w, dtype=np.float32) for w in waveforms], sampling_rate=rate, padding=True,
                        return_attention_mask=True, return_tensors="np")
        result = {key: np.asarray(value) for key, value in out.items()}
        for key in ("input_values", "input_features"):
            if key in result:
                result[key] = result[key].astype(np.float32)
        result["attention_mask"] = result["attention_mask"].astype(np.int64)
        return result

    return extract
