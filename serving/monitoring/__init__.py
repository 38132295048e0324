"""Online monitoring of the inference service: drift, delayed-label accuracy, calibration,
slices, Prometheus metrics, and canary releases with automatic rollback.

Modules, one concept each:

- :mod:`~serving.monitoring.config`: :class:`MonitoringConfig` and the slice specs;
- :mod:`~serving.monitoring.drift`: PSI and KS against a version's reference profile;
- :mod:`~serving.monitoring.labels`: the bounded store delayed labels join against;
- :mod:`~serving.monitoring.metrics`: accuracy, macro P/R/F1 and ECE over a sliding window;
- :mod:`~serving.monitoring.records`: what the monitor takes in (:class:`Observation`,
  :class:`LabelItem`, :class:`VersionReference`);
- :mod:`~serving.monitoring.version_state`: one version's windows, summary and rollback input;
- :mod:`~serving.monitoring.monitor`: :class:`Monitor`, all of the above for every version;
- :mod:`~serving.monitoring.canary`: the traffic split and :class:`CanaryController`;
- :mod:`~serving.monitoring.service`: :class:`MonitoringService`, monitor plus canary;
- :mod:`~serving.monitoring.replica`: the observer, canary router and middleware of a replica;
- :mod:`~serving.monitoring.prom`: the ``trimtab_*`` Prometheus metrics;
- :mod:`~serving.monitoring.routes`: the HTTP routes;
- :mod:`~serving.monitoring.wiring`: all of it in the Ray Serve app (imports Ray Serve, so it
  is not imported here).
"""

from serving.monitoring.canary import CanaryController, CanaryError, CanaryState, canary_fraction
from serving.monitoring.config import (
    FeatureRangeSlice,
    FeatureValueSlice,
    MonitoringConfig,
    default_rollback_policy,
)
from serving.monitoring.drift import population_stability_index
from serving.monitoring.metrics import classification_metrics, expected_calibration_error
from serving.monitoring.monitor import Monitor
from serving.monitoring.records import LabelItem, Observation, VersionReference
from serving.monitoring.service import MonitoringService

__all__ = [
    "CanaryController",
    "CanaryError",
    "CanaryState",
    "FeatureRangeSlice",
    "FeatureValueSlice",
    "LabelItem",
    "Monitor",
    "MonitoringConfig",
    "MonitoringService",
    "Observation",
    "VersionReference",
    "canary_fraction",
    "classification_metrics",
    "default_rollback_policy",
    "expected_calibration_error",
    "population_stability_index",
]
