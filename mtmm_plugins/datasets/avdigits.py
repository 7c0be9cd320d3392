"""avdigits: real handwritten digit images paired with real spoken digits (AV-MNIST style).

The sources (8x8 UCI digit images; FSDD recordings as 13-dim MFCC sequences of 6
to 92 frames) ship in ``avdigits.npz`` beside this file, already split into
train/validation/test so that no image and no recording appears in two splits.
See ``AVDIGITS.md`` for the sources and licences, and ``scripts/build_avdigits.py``.

Each recording of a split becomes one sample, paired with an image of the same
split: half the pairs show the same digit, half a different one, chosen from
``seed``. Four tasks of three kinds: ``image_digit`` and ``audio_digit`` (10
classes), ``match`` (binary: same digit?) and ``digit_sum`` (regression, 0 to 18).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtmm_core.contracts import Batch

DATA_FILE = Path(__file__).with_name("avdigits.npz")
SPLITS = ("train", "validation", "test")
TASKS = {
    "image_digit": {"kind": "classification", "num_classes": 10},
    "audio_digit": {"kind": "classification", "num_classes": 10},
    "match": {"kind": "binary"},
    "digit_sum": {"kind": "regression"},
}
MODALITIES = {
    "image": {"kind": "image", "shape": [1, 8, 8]},
    "audio": {"kind": "sequence", "shape": [None, 13]},
}


@dataclass(frozen=True)
class AVDigitsSplit:
    """One split: sample ``i`` pairs image ``image_index[i]`` with recording ``audio_index[i]``."""

    name: str
    image_index: np.ndarray
    audio_index: np.ndarray
    source: "AVDigits"

    def __len__(self) -> int:
        return len(self.audio_index)

    def batch(self, rows: np.ndarray | list[int]) -> Batch:
        """Tensors for ``rows``: inputs (``image`` ``[B, 1, 8, 8]``, ``audio`` ``[B, T, 13]``), lengths, targets."""
        rows = np.asarray(rows, dtype=np.int64)
        images, recordings = self.image_index[rows], self.audio_index[rows]
        frames, lengths = self.source.frames(recordings)
        image_digit = self.source.image_labels[images].astype(np.int64)
        audio_digit = self.source.audio_labels[recordings].astype(np.int64)
        inputs = {"image": torch.from_numpy(self.source.images[images]), "audio": frames}
        targets = {
            "image_digit": torch.from_numpy(image_digit),
            "audio_digit": torch.from_numpy(audio_digit),
            "match": torch.from_numpy((image_digit == audio_digit).astype(np.float32)),
            "digit_sum": torch.from_numpy((image_digit + audio_digit).astype(np.float32)),
        }
        return Batch(inputs, {"audio": lengths}, targets)


class AVDigits:
    """The avdigits data set: ``splits["train" | "validation" | "test"]``, pairings drawn from ``seed``.

    Images are scaled to ``[0, 1]`` as float32 ``[N, 1, 8, 8]``; MFCC frames are
    standardised per coefficient with the training recordings' mean and deviation.
    """

    modalities = MODALITIES
    tasks = TASKS

    def __init__(self, *, seed: int = 0, path: str | None = None):
        with np.load(path or DATA_FILE) as data:
            arrays = {key: data[key] for key in data.files}
        self.images = (arrays["images"].astype(np.float32) / 16.0)[:, None]
        self.image_labels = arrays["image_labels"]
        self.audio_labels = arrays["audio_labels"]
        self.offsets = arrays["mfcc_offsets"]
        train_frames = np.concatenate([
            arrays["mfcc"][self.offsets[r]:self.offsets[r + 1]] for r in np.flatnonzero(arrays["audio_split"] == 0)
        ])
        mean, std = train_frames.mean(axis=0), train_frames.std(axis=0) + 1e-6
        self.mfcc = ((arrays["mfcc"] - mean) / std).astype(np.float32)
        rng = np.random.default_rng(seed)
        self.splits = {
            name: self._pair(name, np.flatnonzero(arrays["image_split"] == code),
                             np.flatnonzero(arrays["audio_split"] == code), rng)
            for code, name in enumerate(SPLITS)
        }

    def frames(self, recordings: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded MFCC frames ``[B, T_max, 13]`` and lengths ``[B]`` of the given recordings."""
        lengths = self.offsets[recordings + 1] - self.offsets[recordings]
        padded = np.zeros((len(recordings), int(lengths.max()), self.mfcc.shape[1]), dtype=np.float32)
        for row, (recording, length) in enumerate(zip(recordings, lengths)):
            padded[row, :length] = self.mfcc[self.offsets[recording]:self.offsets[recording] + length]
        return torch.from_numpy(padded), torch.from_numpy(lengths.astype(np.int64))

    def _pair(self, name: str, images: np.ndarray, recordings: np.ndarray,
              rng: np.random.Generator) -> AVDigitsSplit:
        """Pair every recording with an image: half (at random) the same digit, the rest a different one."""
        order = rng.permutation(recordings)
        by_digit = {d: images[self.image_labels[images] == d] for d in range(10)}
        paired = np.empty(len(order), dtype=np.int64)
        for i, recording in enumerate(order):
            digit = int(self.audio_labels[recording])
            if i < len(order) // 2:
                candidates = by_digit[digit]
            else:
                candidates = images[self.image_labels[images] != digit]
            paired[i] = rng.choice(candidates)
        mixed = rng.permutation(len(order))  # interleave matching and non-matching pairs
        return AVDigitsSplit(name, paired[mixed], order[mixed], self)
