"""avdigits cut short, registered as the data-set plugin ``small_avdigits`` for quick training tests."""

from __future__ import annotations

import mtmm_core
from mtmm_core.config import load_config
from mtmm_plugins.datasets.avdigits import AVDigits

SMALL_MODEL = [
    "model.dim=32",
    "model.encoders.image.channels=[16, 32]",
    "model.encoders.audio.depth=1",
    "train.progress=false",
]


class FewRows:
    """The first ``rows`` samples of a split."""

    def __init__(self, split, rows: int):
        self.split, self.rows = split, min(rows, len(split))

    def __len__(self) -> int:
        return self.rows

    def batch(self, rows):
        return self.split.batch(rows)


class SmallAVDigits:
    """avdigits with ``train_rows`` training samples and 192 validation and test samples."""

    def __init__(self, *, train_rows: int = 512, seed: int = 0):
        full = AVDigits(seed=seed)
        self.modalities, self.tasks = full.modalities, full.tasks
        self.splits = {"train": FewRows(full.splits["train"], train_rows),
                       "validation": FewRows(full.splits["validation"], 192),
                       "test": FewRows(full.splits["test"], 192)}


class SmallDataPlugin:
    @mtmm_core.hookimpl
    def register_datasets(self, register):
        register("small_avdigits", SmallAVDigits)


def small_config(*overrides: str) -> dict:
    """The default config on ``small_avdigits`` with a small model and concat fusion."""
    config = load_config(None, [*SMALL_MODEL, "data.name=small_avdigits", *overrides])
    config["model"]["fusion"] = {"name": "concat"}
    return config
