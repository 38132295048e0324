"""Input and prediction drift of live traffic against a version's reference profile.

**Bins.** Each feature uses the bins of its reference profile (see
:func:`serving.registry.build_reference_profile`): 10 quantile bins of the reference rows with
duplicate cut points removed, open outer bins, right-closed, so a value ``x`` falls in bin
``numpy.searchsorted(cut_points, x, side="left")``. Predicted classes use one bin per class.

**PSI.** The population stability index of a window against the reference is
``sum_i (a_i - e_i) * ln(a_i / e_i)`` over the bins, where ``e_i`` and ``a_i`` are the smoothed
reference and window proportions ``(count_i + 0.5) / (total + 0.5 * bins)``. The half pseudo-count
per bin (Jeffreys' prior) keeps an empty bin finite: every term is >= 0, and identical counts
give exactly 0. Thresholds: < 0.1 stable, 0.1-0.25 ``warn`` (moderate shift), > 0.25 ``alert``
(significant shift; the feature counts as drifted).

**KS.** The two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) of the window's raw
values against the profile's reference sample, per feature. One test per feature is many tests
(64 for the digits): at ``alpha = 0.01`` uncorrected, undrifted traffic would flag some feature
in about half of all windows. The p-values are therefore adjusted for multiple testing before
they are compared with ``alpha``: Holm's step-down method (:func:`holm_adjusted`, controls the
chance of flagging any undrifted feature) by default, or Benjamini-Hochberg
(``scipy.stats.false_discovery_control``, controls the expected share of false flags).

**Enough rows.** PSI is biased upward on few rows: on undrifted data its expected value is
about ``(bins - 1) * (1 / window_rows + 1 / reference_rows)`` (it is asymptotically a scaled
chi-square; Yurdakul 2018). A window therefore reports no PSI level, drifted feature or status
until it holds ``min_rows`` rows; ``bench/bench_monitoring_stats.py`` measures how many rows
that takes (``docs/benchmarks/monitoring.md``). The KS test accounts for the sample size itself
and is reported at any size.

**Window.** :class:`DriftWindow` holds the latest ``size`` rows of one version in ring
buffers: their bin indices (histogram counts are updated incrementally as rows enter and
leave), their predicted classes, and, only when the KS test is on, their raw values.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from serving.monitoring.multiple_testing import KS_CORRECTIONS, adjust_p_values, holm_adjusted

__all__ = [
    "KS_CORRECTIONS",
    "DriftReport",
    "DriftWindow",
    "ReferenceBins",
    "adjust_p_values",
    "holm_adjusted",
    "population_stability_index",
]

logger = logging.getLogger(__name__)

PSI_SMOOTHING = 0.5
"""Pseudo-count added to every bin on both sides of a PSI."""


def population_stability_index(
    expected_counts: Sequence[float] | np.ndarray,
    actual_counts: Sequence[float] | np.ndarray,
    smoothing: float = PSI_SMOOTHING,
) -> float:
    """PSI of ``actual_counts`` against ``expected_counts`` (same bins), smoothed as the module
    docstring says.

    >>> population_stability_index([10, 20, 70], [10, 20, 70])
    0.0
    >>> round(population_stability_index([50, 50], [90, 10]), 3)
    0.853
    """
    expected = np.asarray(expected_counts, dtype=np.float64)
    actual = np.asarray(actual_counts, dtype=np.float64)
    if expected.shape != actual.shape or expected.ndim != 1 or len(expected) == 0:
        raise ValueError(
            f"expected and actual counts must be 1-D over the same bins, got shapes "
            f"{expected.shape} and {actual.shape}"
        )
    if (expected < 0).any() or (actual < 0).any():
        raise ValueError("bin counts must be >= 0")
    bins = len(expected)
    expected = (expected + smoothing) / (expected.sum() + smoothing * bins)
    actual = (actual + smoothing) / (actual.sum() + smoothing * bins)
    # Each term is >= 0 (the difference and the log share their sign); clip rounding below 0.
    return max(float(np.sum((actual - expected) * np.log(actual / expected))), 0.0)


@dataclass(frozen=True)
class ReferenceBins:
    """The reference side of drift for one version, read from its profile."""

    feature_names: tuple[str, ...]
    cut_points: tuple[np.ndarray, ...]
    expected_counts: tuple[np.ndarray, ...]
    samples: tuple[np.ndarray, ...]
    expected_class_counts: np.ndarray

    @classmethod
    def from_profile(
        cls, profile: dict[str, Any], feature_names: Sequence[str], num_classes: int
    ) -> ReferenceBins:
        """Raise ``ValueError`` if ``profile`` lacks a feature or disagrees on its bins."""
        cut_points, counts, samples = [], [], []
        for name in feature_names:
            try:
                entry = profile["features"][name]
            except KeyError:
                raise ValueError(f"the reference profile has no feature {name!r}") from None
            cuts = np.asarray(entry["cut_points"], dtype=np.float64)
            expected = np.asarray(entry["counts"], dtype=np.float64)
            if len(expected) != len(cuts) + 1:
                raise ValueError(
                    f"feature {name!r}: {len(expected)} counts for {len(cuts)} cut points"
                )
            cut_points.append(cuts)
            counts.append(expected)
            samples.append(np.sort(np.asarray(entry.get("sample", []), dtype=np.float64)))
        class_counts = np.asarray(profile["predictions"]["counts"], dtype=np.float64)
        if len(class_counts) != num_classes:
            raise ValueError(
                f"the profile counts {len(class_counts)} predicted classes; the model has "
                f"{num_classes}"
            )
        return cls(
            tuple(feature_names), tuple(cut_points), tuple(counts), tuple(samples), class_counts
        )

    @property
    def max_bins(self) -> int:
        return max((len(c) for c in self.expected_counts), default=1)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Bin index of every value, ``(rows, features)`` int16."""
        indices = np.empty(features.shape, dtype=np.int16)
        for column, cuts in enumerate(self.cut_points):
            indices[:, column] = np.searchsorted(cuts, features[:, column], side="left")
        return indices


@dataclass(frozen=True)
class DriftReport:
    """Drift of one window; :meth:`to_dict` is what the summary shows."""

    rows: int
    feature_psi: dict[str, float]
    ks: dict[str, tuple[float, float]] | None
    """Per feature: KS statistic and raw p-value."""
    prediction_psi: float | None
    psi_warn: float
    psi_alert: float
    ks_alpha: float
    enough_rows: bool
    min_rows: int = 0
    """Rows the window needs before PSI levels, drifted features and the status are reported."""
    ks_correction: str = "holm"
    """Multiple-testing correction of the KS p-values (:data:`KS_CORRECTIONS`)."""

    @property
    def drifted_features(self) -> list[str]:
        """Features with PSI above ``psi_alert``; none before the window has enough rows."""
        if not self.enough_rows:
            return []
        return [name for name, psi in self.feature_psi.items() if psi > self.psi_alert]

    @property
    def drifted_share(self) -> float | None:
        if not self.feature_psi or not self.enough_rows:
            return None
        return len(self.drifted_features) / len(self.feature_psi)

    def ks_adjusted(self) -> dict[str, float]:
        """The KS p-values adjusted by ``ks_correction``, per feature."""
        if not self.ks:
            return {}
        names = list(self.ks)
        adjusted = adjust_p_values([self.ks[name][1] for name in names], self.ks_correction)
        return dict(zip(names, adjusted.tolist(), strict=True))

    def level(self, psi: float | None) -> str | None:
        if psi is None or not self.enough_rows:
            return None
        return "alert" if psi > self.psi_alert else "warn" if psi >= self.psi_warn else "ok"

    def to_dict(self) -> dict[str, Any]:
        psi_values = list(self.feature_psi.values())
        levels = [self.level(psi) for psi in psi_values]
        result: dict[str, Any] = {
            "rows": self.rows,
            "min_rows": self.min_rows,
            "enough_rows": self.enough_rows,
            "thresholds": {"psi_warn": self.psi_warn, "psi_alert": self.psi_alert},
            "max_psi": max(psi_values) if psi_values else None,
            "drifted_share": self.drifted_share,
            "drifted_features": self.drifted_features,
            "warn_features": [
                name
                for name, level in zip(self.feature_psi, levels, strict=True)
                if level == "warn"
            ],
            "status": (
                None
                if not self.enough_rows or not psi_values
                else "alert"
                if "alert" in levels
                else "warn"
                if "warn" in levels
                else "ok"
            ),
            "feature_psi": self.feature_psi,
            "prediction_psi": self.prediction_psi,
            "prediction_status": self.level(self.prediction_psi),
        }
        if self.ks is not None:
            adjusted = self.ks_adjusted()
            drifted = [name for name, p_value in adjusted.items() if p_value < self.ks_alpha]
            result["ks"] = {
                "alpha": self.ks_alpha,
                "correction": self.ks_correction,
                "drifted_share": len(drifted) / len(self.ks) if self.ks else None,
                "drifted_features": drifted,
                "features": {
                    name: {
                        "statistic": statistic,
                        "p_value": p_value,
                        "adjusted_p_value": adjusted[name],
                    }
                    for name, (statistic, p_value) in self.ks.items()
                },
            }
        return result


def _padded_expected(reference: ReferenceBins, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference counts as one ``(features, width)`` matrix, and the mask of real bins."""
    counts = np.zeros((len(reference.expected_counts), width), dtype=np.float64)
    mask = np.zeros(counts.shape, dtype=bool)
    for row, expected in enumerate(reference.expected_counts):
        counts[row, : len(expected)] = expected
        mask[row, : len(expected)] = True
    return counts, mask


class DriftWindow:
    """The latest ``size`` prediction rows of one version (not thread-safe: the monitor
    locks around it).

    Args:
        reference: the version's reference bins; ``None`` tracks predicted classes only.
        num_classes: classes of the model.
        size: rows kept.
        keep_values: keep raw values for the KS test.
    """

    def __init__(
        self,
        reference: ReferenceBins | None,
        num_classes: int,
        size: int,
        *,
        keep_values: bool,
    ) -> None:
        self.reference = reference
        self.num_classes = num_classes
        self.size = size
        num_features = len(reference.feature_names) if reference is not None else 0
        max_bins = reference.max_bins if reference is not None else 1
        self._bins = np.zeros((size, num_features), dtype=np.int16)
        self._values = (
            np.zeros((size, num_features), dtype=np.float32)
            if keep_values and reference is not None
            else None
        )
        self._classes = np.zeros(size, dtype=np.int32)
        self._bin_counts = np.zeros((num_features, max_bins), dtype=np.int64)
        self._class_counts = np.zeros(num_classes, dtype=np.int64)
        self._feature_offsets = np.arange(num_features, dtype=np.int64) * max_bins
        self._expected: tuple[np.ndarray, np.ndarray] | None = None
        self._next = 0
        self.rows = 0

    def add(self, features: np.ndarray, predicted_classes: np.ndarray) -> None:
        """Add rows (``features`` ``(rows, features)``; ``predicted_classes`` ``(rows,)``)."""
        if len(features) > self.size:
            features, predicted_classes = features[-self.size :], predicted_classes[-self.size :]
        count = len(features)
        if count == 0:
            return
        positions = (self._next + np.arange(count)) % self.size
        filled = positions[positions < self.rows]
        if len(filled):
            self._count(self._bins[filled], self._classes[filled], sign=-1)
        bins = self.reference.assign(features) if self.reference is not None else None
        if bins is not None:
            self._bins[positions] = bins
            if self._values is not None:
                self._values[positions] = features
        self._classes[positions] = predicted_classes
        self._count(self._bins[positions], self._classes[positions], sign=1)
        self._next = (self._next + count) % self.size
        self.rows = min(self.rows + count, self.size)

    def _count(self, bins: np.ndarray, classes: np.ndarray, sign: int) -> None:
        if bins.shape[1]:
            flat = (bins.astype(np.int64) + self._feature_offsets).ravel()
            delta = np.bincount(flat, minlength=self._bin_counts.size)
            self._bin_counts += sign * delta.reshape(self._bin_counts.shape)
        self._class_counts += sign * np.bincount(classes, minlength=self.num_classes)

    @property
    def class_counts(self) -> np.ndarray:
        """Predicted rows per class in the window."""
        return self._class_counts.copy()

    def feature_psi(self) -> dict[str, float]:
        """PSI of every feature; empty when the window is empty or has no reference.

        All features at once: the same smoothed sum as :func:`population_stability_index`,
        over each feature's own bins (the padding beyond them is masked out).
        """
        if self.reference is None or self.rows == 0:
            return {}
        if self._expected is None:
            self._expected = _padded_expected(self.reference, self._bin_counts.shape[1])
        expected_counts, mask = self._expected
        bins = mask.sum(axis=1, keepdims=True)
        expected = (expected_counts + PSI_SMOOTHING) / (
            expected_counts.sum(axis=1, keepdims=True) + PSI_SMOOTHING * bins
        )
        actual = (self._bin_counts + PSI_SMOOTHING) / (
            self._bin_counts.sum(axis=1, keepdims=True) + PSI_SMOOTHING * bins
        )
        terms = np.where(mask, (actual - expected) * np.log(actual / expected), 0.0)
        values = np.maximum(terms.sum(axis=1), 0.0).tolist()
        return dict(zip(self.reference.feature_names, values, strict=True))

    def prediction_psi(self) -> float | None:
        if self.reference is None or self.rows == 0:
            return None
        return population_stability_index(self.reference.expected_class_counts, self._class_counts)

    def ks_tests(self) -> dict[str, tuple[float, float]] | None:
        """KS statistic and p-value per feature; ``None`` when raw values are not kept."""
        if self._values is None or self.reference is None:
            return None
        if self.rows == 0:
            return {}
        values = self._values[: self.rows]
        results = {}
        for column, (name, sample) in enumerate(
            zip(self.reference.feature_names, self.reference.samples, strict=True)
        ):
            if len(sample) == 0:
                continue
            with warnings.catch_warnings():
                # With ties, the exact method falls back to the asymptotic one, and says so.
                warnings.filterwarnings("ignore", "ks_2samp: Exact calculation", RuntimeWarning)
                outcome = stats.ks_2samp(values[:, column], sample)
            p_value = float(outcome.pvalue)
            results[name] = (float(outcome.statistic), p_value if math.isfinite(p_value) else 1.0)
        return results

    def report(
        self,
        *,
        psi_warn: float,
        psi_alert: float,
        ks_alpha: float,
        min_rows: int,
        include_ks: bool = True,
        ks_correction: str = "holm",
    ) -> DriftReport:
        """Drift of the window; PSI levels and the status only from ``min_rows`` rows."""
        return DriftReport(
            rows=self.rows,
            feature_psi=self.feature_psi(),
            ks=self.ks_tests() if include_ks else None,
            prediction_psi=self.prediction_psi(),
            psi_warn=psi_warn,
            psi_alert=psi_alert,
            ks_alpha=ks_alpha,
            enough_rows=self.rows >= min_rows,
            min_rows=min_rows,
            ks_correction=ks_correction,
        )
