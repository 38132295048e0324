"""The online statistics of one served version: drift window, labeled window, latencies,
slice keys, and how they read as rollback input (:class:`~policies.rollback.WindowStats`)
and as JSON.

:class:`Slicer` turns feature rows into slice keys (only the keys are kept, never the
values); :class:`VersionState` holds the bounded windows the
:class:`~serving.monitoring.monitor.Monitor` updates.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.rollback import WindowStats
from serving.monitoring.config import FeatureRangeSlice, MonitoringConfig, SliceSpec
from serving.monitoring.drift import DriftWindow, ReferenceBins
from serving.monitoring.metrics import LabeledWindow
from serving.monitoring.records import VersionReference

logger = logging.getLogger(__name__)


class Slicer:
    """Turns feature rows into slice keys (only the keys are kept, never the values)."""

    def __init__(self, specs: Sequence[SliceSpec], feature_names: Sequence[str]) -> None:
        columns = {name: index for index, name in enumerate(feature_names)}
        self._specs = []
        for spec in specs:
            if spec.feature not in columns:
                logger.error("slice on unknown feature %r ignored", spec.feature)
                continue
            self._specs.append((spec, columns[spec.feature]))
        self._seen_values: dict[str, set[str]] = {}

    def keys(self, features: np.ndarray) -> list[tuple[str, ...]]:
        if not self._specs:
            return [()] * len(features)
        per_spec = []
        for spec, column in self._specs:
            values = features[:, column]
            if isinstance(spec, FeatureRangeSlice):
                inside = (values >= spec.low) & (values < spec.high)
                per_spec.append([spec.name if flag else None for flag in inside])
            else:
                seen = self._seen_values.setdefault(spec.feature, set())
                keys = []
                for value in values.tolist():
                    key = f"{spec.feature}={value + 0.0:g}"  # + 0.0: -0.0 is 0
                    if key not in seen and len(seen) >= spec.max_values:
                        key = f"{spec.feature}=other"
                    else:
                        seen.add(key)
                    keys.append(key)
                per_spec.append(keys)
        return [tuple(key for key in row if key is not None) for row in zip(*per_spec, strict=True)]


class VersionState:
    """Every online statistic of one served version, over bounded windows; not thread-safe
    (the :class:`~serving.monitoring.monitor.Monitor` holds the lock)."""

    def __init__(self, reference: VersionReference, config: MonitoringConfig) -> None:
        self.reference = reference
        self.class_index = {name: index for index, name in enumerate(reference.class_names)}
        bins = None
        if reference.profile is not None:
            try:
                bins = ReferenceBins.from_profile(
                    reference.profile, reference.feature_names, len(reference.class_names)
                )
            except (KeyError, TypeError, ValueError) as error:
                logger.error("version %d: drift off, bad profile: %s", reference.version, error)
        self.drift = DriftWindow(
            bins, len(reference.class_names), config.window_size, keep_values=config.ks_test
        )
        self.labeled = LabeledWindow(len(reference.class_names), config.window_size)
        self.latencies: deque[float] = deque(maxlen=config.window_size)
        self.slicer = Slicer(config.slices, reference.feature_names)
        self.requests = 0
        self.rows = 0

    def window_stats(self, last: int) -> WindowStats:
        online = self.labeled.tail_metrics(last)
        latencies = list(self.latencies)[-last:]
        return WindowStats(
            labeled=online["labeled"],
            observed=min(self.drift.rows, last),
            accuracy=online["accuracy"],
            ece=online["ece"],
            feature_psi=self.drift.feature_psi(),
            p99_latency_s=float(np.quantile(latencies, 0.99)) if latencies else None,
            offline_accuracy=self.reference.offline_accuracy,
        )

    def summary(self, config: MonitoringConfig, *, include_ks: bool = True) -> dict[str, Any]:
        """Requests, latency, predicted classes, drift, online metrics and slices, as plain
        JSON-able values."""
        latencies = np.asarray(self.latencies, dtype=np.float64)
        drift = self.drift.report(
            psi_warn=config.psi_warn,
            psi_alert=config.psi_alert,
            ks_alpha=config.ks_alpha,
            min_rows=config.drift_rows_needed,
            include_ks=include_ks,
            ks_correction=config.ks_correction,
        )
        online = self.labeled.metrics()
        online["enough_rows"] = online["labeled"] >= config.min_samples
        online["offline_accuracy"] = self.reference.offline_accuracy
        class_counts = self.drift.class_counts
        return {
            "version": self.reference.version,
            "requests": self.requests,
            "rows": self.rows,
            "window_rows": self.drift.rows,
            "latency_s": latency_quantiles(latencies),
            "predicted_classes": {
                name: int(count)
                for name, count in zip(self.reference.class_names, class_counts, strict=True)
            },
            "drift": drift.to_dict(),
            "online": online,
            "slices": self.labeled.slice_metrics(),
        }


def class_index(label: int | str, state: VersionState) -> int | None:
    """The class index of a label given as an index or a class name; None if the version has
    no such class."""
    num_classes = len(state.reference.class_names)
    if isinstance(label, bool):
        return None
    if isinstance(label, int):
        return label if 0 <= label < num_classes else None
    return state.class_index.get(label)


def latency_quantiles(latencies: np.ndarray) -> dict[str, float | None]:
    """p50, p90, p99 and max of ``latencies`` (all None when empty)."""
    if len(latencies) == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.quantile(latencies, [0.5, 0.9, 0.99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(latencies.max())}
