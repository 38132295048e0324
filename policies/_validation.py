"""Argument checks shared by the policy dataclasses.

Each check returns the value normalised to a plain Python type (so a ``numpy.float32`` from a
search space becomes a ``float``) and raises ``ValueError`` naming the argument and the bad value.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def real_number(name: str, value: Any) -> float:
    """``value`` as a finite ``float``; booleans are refused although Python counts them as ints."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def positive(name: str, value: Any) -> float:
    """``value`` as a ``float`` that is > 0."""
    number = real_number(name, value)
    if not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def in_range(
    name: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool
) -> float:
    """``value`` as a ``float`` inside the interval from ``low`` to ``high``."""
    number = real_number(name, value)
    above_low = number > low if low_open else number >= low
    below_high = number < high if high_open else number <= high
    if not (above_low and below_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number


def integer(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an ``int`` that is >= ``minimum`` (a float such as ``3.0`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)
