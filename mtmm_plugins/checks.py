"""Parameter checks shared by the built-in components.

Each check raises ``ValueError`` naming the parameter, the value given and what would
be valid, e.g. ``depth must be an integer >= 1, got -1``; ``build_model`` prefixes the
path in the spec. A bool is refused where a number is expected: ``True`` is no width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_int(name: str, value: object, minimum: int = 1, note: str = "") -> None:
    """Raise ValueError unless ``value`` is an integer (not a bool) >= ``minimum``.

    ``note`` says what a special value means, e.g. ``"0 = a single linear layer"``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        meaning = f" ({note})" if note else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{meaning}, got {value!r}")


def check_ints(name: str, values: object, minimum: int = 1) -> None:
    """Raise ValueError unless ``values`` is a sequence of integers >= ``minimum`` (entry ``i`` named ``name[i]``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of integers >= {minimum}, got {values!r}")
    for index, value in enumerate(values):
        check_int(f"{name}[{index}]", value, minimum)


def check_number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ValueError unless ``value`` is a finite number (int or float, not a bool) from ``low`` to ``high``.

    The bounds are included unless ``low_open`` / ``high_open``; NaN and infinities are always refused.
    """
    valid = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not valid:
        raise ValueError(f"{name} must be {_describe_range(low, high, low_open, high_open)}, got {value!r}")


def check_fraction(name: str, value: object) -> None:
    """Raise ValueError unless ``0 <= value < 1`` (a probability such as dropout)."""
    check_number(name, value, 0.0, 1.0, high_open=True)


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise ValueError unless ``value`` is a multiple of ``by`` (both already checked to be >= 1)."""
    if value % by != 0:
        raise ValueError(f"expected {name} divisible by {by_name}={by}, got {name}={value}")


def check_heads(heads: object, dim: int) -> None:
    """Raise ValueError unless ``heads`` is an integer >= 1 that divides the attention width ``dim``."""
    check_int("heads", heads)
    assert isinstance(heads, int)
    check_divisible("dim", dim, "heads", heads)


def _describe_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if math.isinf(low) and math.isinf(high):
        return "a finite number"
    if math.isinf(high):
        return f"a number {'>' if low_open else '>='} {low:g}"
    if math.isinf(low):
        return f"a number {'<' if high_open else '<='} {high:g}"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
