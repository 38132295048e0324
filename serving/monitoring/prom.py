"""The Prometheus metrics of online monitoring, through ``ray.serve.metrics``.

Ray exports each as ``ray_<name>`` on every node's metrics export port (``ray start
--metrics-export-port``; ``ray.init(_metrics_export_port=...)``). Replicas record the
per-request ones, which Serve tags with ``deployment``, ``replica`` and ``application``;
the monitoring service records the window statistics. No label takes per-request values:
``version`` is a registry version, ``status`` an HTTP status code, ``class`` a class index,
``feature`` a feature name (64 series per version for the digits model), ``outcome`` one of
four label fates.

Instruments are created lazily, in the process that records them (a Serve replica or the
monitoring actor): ``ray.serve.metrics`` objects do not survive pickling into another process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal, Protocol

logger = logging.getLogger(__name__)

LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


@dataclass(frozen=True)
class Instrument:
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


INSTRUMENTS: dict[str, Instrument] = {
    # Recorded by each replica, per request.
    "trimtab_requests_total": Instrument(
        "counter",
        "Prediction requests answered, by model version and HTTP status code.",
        ("version", "status"),
    ),
    "trimtab_request_latency_seconds": Instrument(
        "histogram",
        "Time from a prediction request reaching the app to its predictions being ready.",
        ("version",),
        tuple(LATENCY_BOUNDARIES_S),
    ),
    "trimtab_batch_size": Instrument(
        "histogram",
        "Rows per prediction request (Serve's own ray_serve_actual_batch_size shows the "
        "dynamic batches).",
        ("version",),
        tuple(BATCH_SIZE_BOUNDARIES),
    ),
    "trimtab_predicted_class_total": Instrument(
        "counter", "Predicted rows by model version and predicted class.", ("version", "class")
    ),
    "trimtab_monitoring_dropped_total": Instrument(
        "counter",
        "Observations a replica could not hand to the monitoring service (queue full or "
        "service unreachable); serving goes on.",
        (),
    ),
    # Recorded by the monitoring service, per window.
    "trimtab_feature_psi": Instrument(
        "gauge",
        "PSI of one input feature over the window against the reference profile.",
        ("version", "feature"),
    ),
    "trimtab_feature_psi_max": Instrument(
        "gauge", "Largest PSI of any input feature over the window.", ("version",)
    ),
    "trimtab_drifted_features_ratio": Instrument(
        "gauge", "Share of input features whose PSI is above the alert threshold.", ("version",)
    ),
    "trimtab_prediction_psi": Instrument(
        "gauge", "PSI of the predicted-class distribution against the reference.", ("version",)
    ),
    "trimtab_online_accuracy_ratio": Instrument(
        "gauge", "Accuracy over the window of labeled predictions.", ("version",)
    ),
    "trimtab_online_macro_f1_ratio": Instrument(
        "gauge", "Macro F1 over the window of labeled predictions.", ("version",)
    ),
    "trimtab_online_ece_ratio": Instrument(
        "gauge",
        "Expected calibration error (15 bins) over the window of labeled predictions.",
        ("version",),
    ),
    "trimtab_labels_total": Instrument(
        "counter",
        "Delayed labels received, by outcome (joined, duplicate, late, unknown).",
        ("outcome",),
    ),
    "trimtab_canary_share_ratio": Instrument(
        "gauge", "Share of traffic the canary version receives (0 when none).", ("version",)
    ),
    "trimtab_rollbacks_total": Instrument(
        "counter", "Canaries rolled back automatically by the rollback policy.", ("version",)
    ),
    "trimtab_promotions_total": Instrument(
        "counter", "Canaries promoted to champion.", ("version",)
    ),
}


class MetricsRecorder(Protocol):
    """Where monitoring sends its measurements; ``name`` is a key of :data:`INSTRUMENTS`."""

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        """Add ``value`` (>= 0; 0 is a no-op) to a counter."""
        ...

    def set(self, name: str, value: float, tags: dict[str, str]) -> None: ...

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None: ...


class NullRecorder:
    """Records nothing (monitoring outside Ray, or Prometheus export turned off)."""

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        return None

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        return None

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        return None


class RayMetricsRecorder:
    """Records through ``ray.serve.metrics``, creating each instrument on first use.

    Picklable: the instruments are made again in whichever process records.
    """

    def __init__(self) -> None:
        self._instruments: dict[str, object] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _get(self, name: str):
        instrument = self._instruments.get(name)
        if instrument is not None:
            return instrument
        from ray.serve import metrics

        spec = INSTRUMENTS[name]
        with self._lock:
            if name not in self._instruments:
                if spec.kind == "counter":
                    made = metrics.Counter(name, spec.description, tag_keys=spec.tag_keys)
                elif spec.kind == "gauge":
                    made = metrics.Gauge(name, spec.description, tag_keys=spec.tag_keys)
                else:
                    made = metrics.Histogram(
                        name,
                        spec.description,
                        boundaries=list(spec.boundaries),
                        tag_keys=spec.tag_keys,
                    )
                self._instruments[name] = made
            return self._instruments[name]

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        if value > 0:  # Counter.inc(0) raises
            self._get(name).inc(value, tags=tags)

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._get(name).set(value, tags=tags)

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._get(name).observe(value, tags=tags)
