"""The embedded avdigits data set: sizes, disjoint splits, balanced pairing, targets, determinism."""

from __future__ import annotations

import numpy as np
import torch

import mtmm_core
from mtmm_plugins.datasets.avdigits import AVDigits


def test_registered_as_a_dataset_plugin():
    component = mtmm_core.get_component("dataset", "avdigits")
    assert component.distribution == "mtmm" and component.factory is AVDigits


def test_splits_cover_every_recording_once_and_share_no_source():
    data = AVDigits(seed=int(np.random.randint(1000)))
    recordings = np.concatenate([s.audio_index for s in data.splits.values()])
    assert sorted(recordings.tolist()) == list(range(3000))
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 2100, "validation": 450, "test": 450}
    images = {name: set(split.image_index.tolist()) for name, split in data.splits.items()}
    assert not images["train"] & images["validation"] and not images["train"] & images["test"]
    assert not images["validation"] & images["test"]


def test_half_the_pairs_match_and_the_targets_agree_with_the_sources():
    data = AVDigits(seed=3)
    for split in data.splits.values():
        rows = np.arange(len(split))
        inputs, lengths, targets, _, _ = split.batch(rows)
        assert targets["match"].sum().item() == len(split) // 2
        assert 0.3 < targets["match"][: len(split) // 4].mean() < 0.7  # matching pairs are interleaved
        torch.testing.assert_close(targets["digit_sum"], (targets["image_digit"] + targets["audio_digit"]).float())
        assert inputs["image"].shape == (len(split), 1, 8, 8) and 0 <= inputs["image"].min() <= inputs["image"].max() <= 1
        assert inputs["audio"].shape[2] == 13 and 6 <= lengths["audio"].min() and lengths["audio"].max() <= 92
        padded = torch.arange(inputs["audio"].shape[1])[None, :] >= lengths["audio"][:, None]
        assert (inputs["audio"][padded] == 0).all()


def test_pairing_is_deterministic_from_the_seed():
    first, again, other = AVDigits(seed=7), AVDigits(seed=7), AVDigits(seed=8)
    assert np.array_equal(first.splits["train"].image_index, again.splits["train"].image_index)
    assert np.array_equal(first.splits["test"].audio_index, again.splits["test"].audio_index)
    assert not np.array_equal(first.splits["train"].image_index, other.splits["train"].image_index)
