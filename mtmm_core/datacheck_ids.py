"""The checks of a data folder's id modalities (``dtype: int64``; docs/data.md), beside :mod:`mtmm_core.datacheck`.

An ``array`` with ``dtype: int64`` holds ``[N, C]`` integer ids (e.g. the categories of C columns,
for the ``tabular`` encoder's ``categories``); a ``sequence`` with ``dtype: int64`` holds frames
``[total, 1]`` of integer ids (e.g. text tokens) and reaches the model as ``[B, T]`` int64 ids.
``vocab_sizes`` (one per column; one for a sequence) bounds the ids: ``0 <= id < vocab_sizes[c]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtmm_core.datacheck import CONFIG_FILE, _number, _scan_rows, _shown

DTYPES = ("float32", "int64")
MAX_VOCABULARY = 2**31 - 1


def check_ids(checker: Any, entry: dict, field: str, kind: str) -> bool:
    """Check ``dtype`` and ``vocab_sizes`` of the modality ``entry`` at ``field`` (its files already
    checked as an array or a sequence) and, scanning, that the ids lie in ``[0, vocab_sizes[c])``."""
    dtype = entry.get("dtype", "float32")
    if dtype not in DTYPES:
        checker.add(CONFIG_FILE, f"{field}.dtype", None, f"expected one of {', '.join(DTYPES)} (the values reach the "
                                                          f"model as that type), got {dtype!r}")
        return False
    if dtype == "float32":
        checker.add(CONFIG_FILE, f"{field}.vocab_sizes", None, "is only for ids: give dtype: int64 with it")
        return False
    if "scale" in entry:
        checker.add(CONFIG_FILE, f"{field}.scale", None, "ids (dtype: int64) are not scaled; leave scale out")
        return False
    key = "file" if kind == "array" else "values"
    array = checker.open(entry, key, field)
    if array is None:
        return False
    file = entry[key]
    columns = array.shape[1] if array.ndim == 2 else None
    if array.dtype.kind not in "iu" or columns is None or (kind == "sequence" and columns != 1):
        want = "[N, C]" if kind == "array" else "[total, 1]"
        checker.add(file, f"{field}.{key}", None, f"dtype: int64 needs integer ids {want}, got dtype {array.dtype} "
                                                  f"shape {list(array.shape)}")
        return False
    sizes = entry.get("vocab_sizes")
    if sizes is None:
        bound = None
    elif (not isinstance(sizes, list) or len(sizes) != columns
          or not all(_number(s) and int(s) == s and 1 <= s <= MAX_VOCABULARY for s in sizes)):
        checker.add(CONFIG_FILE, f"{field}.vocab_sizes", None,
                    f"expected a list of {columns} integer(s) in [1, {MAX_VOCABULARY}] (one per column of {file}), "
                    f"got {sizes!r}")
        return False
    else:
        bound = np.asarray(sizes, dtype=np.int64)
    if not checker.scan:
        return True
    if bound is None:
        bad, values = _scan_rows(array, lambda chunk: (chunk < 0).any(axis=1))
        limit = "at least 0"
    else:
        bad, values = _scan_rows(array, lambda chunk: ((chunk < 0) | (chunk >= bound)).any(axis=1))
        limit = f"in [0, vocab_sizes) = [0, {sizes})"
    if len(bad):
        word = "row" if kind == "array" else "frame"
        checker.add(file, f"{field}.{key}", int(bad[0]) if kind == "array" else None,
                    f"ids out of range at {_shown(bad, values, word=word)}; expected ids {limit}")
        return False
    return True
