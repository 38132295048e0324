"""Multiple-testing corrections for the per-feature drift tests (one KS test per feature)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

KS_CORRECTIONS = ("holm", "bh")
"""Multiple-testing corrections of the per-feature KS p-values."""


def holm_adjusted(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    With the ``m`` p-values sorted ascending, the ``i``-th (from 0) is multiplied by ``m - i``,
    the running maximum is taken so that the adjusted values keep the order, and they are
    capped at 1. Rejecting where the adjusted p-value is below ``alpha`` keeps the chance of
    any false rejection at most ``alpha``, whatever the dependence between the tests.
    (statsmodels' ``multipletests(method="holm")`` computes the same values.)

    >>> holm_adjusted([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    values = np.asarray(p_values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {values.shape}")
    if len(values) == 0:
        return values.copy()
    order = np.argsort(values, kind="stable")
    multipliers = len(values) - np.arange(len(values))
    stepped = np.minimum(np.maximum.accumulate(values[order] * multipliers), 1.0)
    adjusted = np.empty_like(stepped)
    adjusted[order] = stepped
    return adjusted


def adjust_p_values(p_values: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """``method`` ``"holm"`` (:func:`holm_adjusted`) or ``"bh"`` (Benjamini-Hochberg,
    ``scipy.stats.false_discovery_control``)."""
    if method == "holm":
        return holm_adjusted(p_values)
    if method == "bh":
        values = np.asarray(p_values, dtype=np.float64)
        return stats.false_discovery_control(values, method="bh") if len(values) else values
    raise ValueError(f"correction must be one of {KS_CORRECTIONS}, got {method!r}")
