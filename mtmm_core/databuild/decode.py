"""Decoding one cell of a table: an image file (Pillow), an audio file (soundfile, soxr) and text.

Each decoder is imported lazily, so that a table without images needs no Pillow, and a missing
package fails with the extra to install (``pip install 'mtmm[images]'`` / ``mtmm[audio]``).

The log-mel spectrogram is computed here with NumPy, in a few documented lines rather than
through a library: torchaudio would replace the CPU build of torch, and librosa brings numba and
llvmlite for one filterbank. Frames are Hann-windowed ``n_fft``-sample windows every ``hop``
samples; their power spectrum goes through ``n_mels`` triangular filters evenly spaced on the HTK
mel scale (``mel = 2595 log10(1 + f / 700)``) between 0 Hz and the Nyquist frequency, and
``log(power + 1e-6)`` is the frame's feature vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtmm_core.errors import UsageError

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
LOG_FLOOR = 1e-6


def _needs(module: str, extra: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UsageError(f"{what} needs the {module} package: pip install 'mtmm[{extra}]'") from error


def load_image(path: Path, size: list[int], resize: int | None, channels: int) -> np.ndarray:
    """The image at ``path`` as float32 ``[channels, H, W]`` in [0, 1]: converted to grey (1 channel) or
    RGB (3), its shorter side resized to ``resize`` (default: the larger of ``size``, bicubic), then
    cropped at the centre to ``size = [H, W]``."""
    image_module = _needs("PIL.Image", "images", "an image feature")
    with image_module.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        height, width = size
        shorter = resize or max(height, width)
        scale = shorter / min(image.size)
        new = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
        image = image.resize(new, image_module.Resampling.BICUBIC)
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1).copy()


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` evenly spaced on the HTK mel scale from 0 Hz to
    ``sample_rate / 2``; filter ``m`` rises from mel point ``m`` to ``m + 1`` and falls to ``m + 2``."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)

    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    points = to_hz(np.linspace(0.0, to_mel(sample_rate / 2.0), n_mels + 2))
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (bins - lower) / np.maximum(centre - lower, 1e-12)
    falling = (upper - bins) / np.maximum(upper - centre, 1e-12)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def log_mel(samples: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """Log-mel frames ``[T, n_mels]`` float32 of mono ``samples [S]`` (T = 1 + (S - n_fft) // hop, at least
    1: a clip shorter than ``n_fft`` is padded with zeros)."""
    if len(samples) < n_fft:
        samples = np.pad(samples, (0, n_fft - len(samples)))
    count = 1 + (len(samples) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]
    frames = samples[index] * np.hanning(n_fft + 1)[:-1]  # periodic Hann window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log(power @ mel_filterbank(sample_rate, n_fft, n_mels).T + LOG_FLOOR).astype(np.float32)


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """The audio file at ``path`` decoded by soundfile (WAV, FLAC, OGG, ...), averaged to mono and
    resampled to ``sample_rate`` with soxr when its own rate differs: float64 ``[S]``."""
    soundfile = _needs("soundfile", "audio", "an audio feature")
    samples, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    samples = samples.mean(axis=1)
    if rate != sample_rate:
        soxr = _needs("soxr", "audio", f"resampling {path} from {rate} Hz to {sample_rate} Hz")
        samples = soxr.resample(samples, rate, sample_rate)
    return samples


def byte_ids(text: str, max_len: int) -> np.ndarray:
    """The UTF-8 bytes of ``text`` as ids ``byte + 1`` (0 is padding), cut after ``max_len``: int64 ``[T]``.
    These are the ids of the built-in ``text`` encoder's ``ByteTokenizer``."""
    return np.frombuffer(text.encode("utf-8")[:max_len], dtype=np.uint8).astype(np.int64) + 1


_TOKENIZERS: dict[Any, Any] = {}


def _cache_key(kind: str, path: str) -> Any:
    """The cache key of a local folder: its resolved path and its files' sizes and modification times, so
    that the same relative path in another working folder, or a folder saved again, is read again."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return (kind, path)
    files = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))
    return (kind, str(folder.resolve()), files)


def hf_tokenizer(path: str) -> Any:
    """The Hugging Face tokenizer saved in the local folder ``path`` (loaded once per folder, lazily, through
    :func:`mtmm_core.pretrained.load_tokenizer`: local files only, no remote code)."""
    if path in _TOKENIZERS:  # a stand-in put there by a test
        return _TOKENIZERS[path]
    key = _cache_key("tokenizer", path)
    if key not in _TOKENIZERS:
        _needs("transformers", "hf", f"tokenizer {path!r}")
        from mtmm_core.pretrained import load_tokenizer

        _TOKENIZERS[key] = load_tokenizer(path).tokenizer
    return _TOKENIZERS[key]


def hf_feature_extractor(path: str) -> Any:
    """The Hugging Face feature extractor saved in the local folder ``path`` (loaded once per folder, lazily,
    through :func:`mtmm_core.pretrained.read_feature_extractor`)."""
    if f"features:{path}" in _TOKENIZERS:  # a stand-in put there by a test
        return _TOKENIZERS[f"features:{path}"]
    key = _cache_key("features", path)
    if key not in _TOKENIZERS:
        _needs("transformers", "hf", f"feature extractor {path!r}")
        from mtmm_core.pretrained import read_feature_extractor

        _TOKENIZERS[key] = read_feature_extractor(path)
    return _TOKENIZERS[key]
