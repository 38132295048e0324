"""Typed settings of online monitoring: windows, retention, slices, canary and rollback.

:class:`MonitoringConfig` sits beside :class:`~serving.serve_config.ServeConfig` (composition:
:func:`serving.monitoring.wiring.run_monitored_service` takes both). Every field is honoured;
a bad value raises ``ValueError`` naming it.

Example::

    config = MonitoringConfig(
        window_size=500,
        slices=(FeatureRangeSlice("ink-centre", "pixel_36", low=8.0), FeatureValueSlice("pixel_1")),
        canary_share=0.1,
        rollback=RollbackPolicy(rules=(AccuracyDropRule(max_drop_points=5),), window=300),
    )
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from policies.rollback import AccuracyDropRule, CalibrationRule, DriftRule, RollbackPolicy

logger = logging.getLogger(__name__)

DEFAULT_DRIFT_MIN_ROWS = 300
"""Rows a drift window needs before it reports PSI levels and a status. Measured by
``bench/bench_monitoring_stats.py`` (``docs/benchmarks/monitoring.md``): on undrifted digits
traffic against a train+validation reference, 300 rows is where the share of windows with any
feature at "warn" falls to a few percent (at 100 rows every window has one)."""


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class FeatureRangeSlice:
    """Rows whose ``feature`` lies in ``[low, high)``; reported under ``name``."""

    name: str
    feature: str
    low: float = -math.inf
    high: float = math.inf

    def __post_init__(self) -> None:
        if not self.name or not self.feature:
            raise ValueError(f"a slice needs a name and a feature, got {self!r}")
        if not self.low < self.high:
            raise ValueError(f"slice {self.name!r}: low ({self.low}) must be below high")


@dataclass(frozen=True)
class FeatureValueSlice:
    """One slice per value of ``feature`` (a categorical "slice column"), reported as
    ``"{feature}={value}"``. Values beyond the first ``max_values`` seen share
    ``"{feature}=other"``, so a continuous feature cannot grow the summary without bound."""

    feature: str
    max_values: int = 20

    def __post_init__(self) -> None:
        if not self.feature:
            raise ValueError("a slice column needs a feature name")
        _check_count("max_values", self.max_values)


SliceSpec = FeatureRangeSlice | FeatureValueSlice


def default_rollback_policy() -> RollbackPolicy:
    """Accuracy no more than 5 points below the champion's, ECE at most 0.15, and PSI above
    0.25 on at most half of the features; over the last 500 rows, judged from 100."""
    return RollbackPolicy(
        rules=(AccuracyDropRule(max_drop_points=5.0), CalibrationRule(max_ece=0.15), DriftRule()),
        window=500,
        min_samples=100,
    )


@dataclass(frozen=True)
class MonitoringConfig:
    """Everything online monitoring needs; checked when built."""

    window_size: int = 1000
    """Rows per model version in the sliding windows: the latest ``window_size`` predictions
    (drift, latency, predicted classes) and the latest ``window_size`` labeled predictions
    (accuracy, precision/recall/F1, calibration, slices)."""
    min_samples: int = 100
    """Labeled rows below which the summary marks a window's online metrics as not yet
    meaningful (``"enough_rows": false``)."""
    drift_min_rows: int | None = None
    """Prediction rows a drift window needs before it reports PSI levels, drifted features and
    a status (PSI on fewer rows reads sampling noise as drift). ``None``:
    :data:`DEFAULT_DRIFT_MIN_ROWS`, with a warning when ``window_size`` is too small to ever
    hold that many (an explicit value above ``window_size`` is refused)."""
    retention_s: float = 3600.0
    """How long a prediction waits for its delayed label. A label arriving later is counted
    as ``late`` and ignored."""
    max_pending_predictions: int = 100_000
    """Predictions kept for the label join (id, version, predicted class, probabilities,
    slice keys, time; never the input features). The oldest go first beyond this."""
    psi_warn: float = 0.1
    """PSI at which a feature is reported as ``warn`` (a moderate shift)."""
    psi_alert: float = 0.25
    """PSI above which a feature counts as drifted (``alert``: a significant shift)."""
    ks_test: bool = True
    """Run the two-sample Kolmogorov-Smirnov test against the profile's reference sample. It
    needs the raw feature values of the drift window (kept in memory only, dropped as rows
    leave the window); ``False`` keeps only their histogram bins."""
    ks_alpha: float = 0.01
    """Adjusted p-value below which the KS test calls a feature drifted."""
    ks_correction: str = "holm"
    """Multiple-testing correction of the per-feature KS p-values: ``"holm"`` (the chance of
    flagging any undrifted feature stays below ``ks_alpha``) or ``"bh"`` (Benjamini-Hochberg:
    the expected share of false flags among flagged features stays below it)."""
    slices: tuple[SliceSpec, ...] = ()
    """Segments with their own online metrics."""
    canary_share: float = 0.1
    """Share of traffic a canary receives when started without a share."""
    canary_alias: str | None = None
    """A registry alias to follow: whenever it points at a version that is neither the
    champion nor one already judged, that version becomes the canary (``canary_share``)."""
    rollback: RollbackPolicy | None = None
    """Rules that take a canary out; ``None`` takes :func:`default_rollback_policy`."""
    auto_promote: bool = False
    """Promote a canary once a full policy window of labeled rows passes every rule; else an
    admin call (``POST /admin/canary/promote``) promotes it."""
    evaluation_interval_s: float = 5.0
    """How often the rollback rules are evaluated and the drift and accuracy gauges updated."""
    flush_interval_s: float = 1.0
    """How often each replica ships its observations to the monitoring service and learns the
    canary's state (so a rollback reaches every replica within this). Each flush is one Ray
    actor call (a few milliseconds of CPU on either side), whatever the traffic."""
    max_queued_observations: int = 10_000
    """Observations a replica holds between flushes; more are dropped and counted."""
    max_versions: int = 4
    """Model versions tracked at once; the one seen least recently goes first."""
    max_labels_per_request: int = 10_000
    """Labels one ``POST /labels`` may carry; more is a 422."""

    def __post_init__(self) -> None:
        for name in ("window_size", "min_samples", "max_pending_predictions"):
            _check_count(name, getattr(self, name))
        for name in ("max_queued_observations", "max_versions", "max_labels_per_request"):
            _check_count(name, getattr(self, name))
        for name in ("retention_s", "psi_warn", "psi_alert", "evaluation_interval_s"):
            _check_positive(name, getattr(self, name))
        _check_positive("flush_interval_s", self.flush_interval_s)
        if self.min_samples > self.window_size:
            raise ValueError(
                f"min_samples ({self.min_samples}) cannot exceed window_size ({self.window_size})"
            )
        if not self.psi_warn < self.psi_alert:
            raise ValueError(f"psi_warn ({self.psi_warn}) must be below psi_alert")
        if self.drift_min_rows is None:
            object.__setattr__(self, "drift_min_rows", DEFAULT_DRIFT_MIN_ROWS)
            if self.window_size < DEFAULT_DRIFT_MIN_ROWS:
                logger.warning(
                    "window_size %d cannot hold the %d rows drift needs: no drift status will be "
                    "reported (set drift_min_rows to accept noisier drift figures)",
                    self.window_size,
                    DEFAULT_DRIFT_MIN_ROWS,
                )
        else:
            _check_count("drift_min_rows", self.drift_min_rows)
            if self.drift_min_rows > self.window_size:
                raise ValueError(
                    f"drift_min_rows ({self.drift_min_rows}) cannot exceed window_size "
                    f"({self.window_size})"
                )
        if self.ks_correction not in ("holm", "bh"):
            raise ValueError(f"ks_correction must be 'holm' or 'bh', got {self.ks_correction!r}")
        if not 0.0 < self.ks_alpha < 1.0:
            raise ValueError(f"ks_alpha must be in (0, 1), got {self.ks_alpha!r}")
        if not 0.0 < self.canary_share < 1.0:
            raise ValueError(f"canary_share must be in (0, 1), got {self.canary_share!r}")
        if not isinstance(self.slices, tuple):
            object.__setattr__(self, "slices", tuple(self.slices))
        names = [self.slice_name(spec) for spec in self.slices]
        for spec in self.slices:
            if not isinstance(spec, (FeatureRangeSlice, FeatureValueSlice)):
                raise ValueError(f"slices must be FeatureRangeSlice or FeatureValueSlice: {spec!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"slice names must be unique, got {names}")
        if self.canary_alias is not None:
            from serving.registry import ALIAS_PATTERN

            if not ALIAS_PATTERN.fullmatch(self.canary_alias):
                raise ValueError(
                    f"canary_alias must match [a-z][a-z0-9_-]*, got {self.canary_alias!r}"
                )
        if self.rollback is None:
            object.__setattr__(self, "rollback", default_rollback_policy())
        elif not isinstance(self.rollback, RollbackPolicy):
            raise ValueError(f"rollback must be a RollbackPolicy, got {self.rollback!r}")
        if self.rollback_policy.window > self.window_size:
            raise ValueError(
                f"the rollback window ({self.rollback_policy.window}) cannot exceed "
                f"window_size ({self.window_size})"
            )

    @property
    def drift_rows_needed(self) -> int:
        """:attr:`drift_min_rows`, resolved."""
        assert self.drift_min_rows is not None  # set in __post_init__
        return self.drift_min_rows

    @property
    def rollback_policy(self) -> RollbackPolicy:
        assert self.rollback is not None  # set in __post_init__
        return self.rollback

    @staticmethod
    def slice_name(spec: SliceSpec) -> str:
        return spec.name if isinstance(spec, FeatureRangeSlice) else spec.feature
