"""The monitor: per-version drift, latency, predicted classes and delayed-label metrics.

:class:`Monitor` implements :class:`~serving.inference.PredictionObserver`: ``observe`` only
appends to a bounded queue (microseconds, so the request never waits on statistics) and a
background thread drains it into :meth:`Monitor.ingest`, which updates every statistic
incrementally. In Ray Serve the replicas ship their observations to one shared monitor instead
(:mod:`serving.monitoring.replica`, :mod:`serving.monitoring.service`), so that a label reaching
any replica joins a prediction made by any other.

What is kept, per version: the latest ``window_size`` prediction rows (histogram bins of each
feature, raw values only for the KS test, predicted class, latency) and the latest
``window_size`` labeled rows; across versions, the predictions awaiting labels
(:mod:`serving.monitoring.labels`). All of it is bounded by the configuration.

Example::

    monitor = Monitor(MonitoringConfig(), VersionReference.loader(Registry(root)))
    monitor.observe("r1", 1, features, probabilities, 0.004)
    monitor.flush()
    monitor.add_labels([LabelItem("r1", 3)])
    monitor.summary()["versions"]["1"]["online"]["accuracy"]
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policies.rollback import WindowStats
from serving.monitoring.config import MonitoringConfig
from serving.monitoring.labels import LABEL_OUTCOMES, PredictionStore
from serving.monitoring.metrics import LabeledRow
from serving.monitoring.records import LabelItem, Observation, VersionReference
from serving.monitoring.version_state import VersionState, class_index

__all__ = ["LabelItem", "Monitor", "Observation", "VersionReference"]

logger = logging.getLogger(__name__)


class Monitor:
    """Online statistics of every served version; thread-safe.

    Args:
        config: windows, retention, thresholds, slices.
        references: the :class:`VersionReference` of a version number (usually
            :meth:`VersionReference.loader` over the registry); called once per version.
        clock: monotonic seconds for the label retention (tests pass their own).
    """

    def __init__(
        self,
        config: MonitoringConfig,
        references: Callable[[int], VersionReference],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._references = references
        self._lock = threading.RLock()
        self._versions: OrderedDict[int, VersionState] = OrderedDict()
        self._store = PredictionStore(config.retention_s, config.max_pending_predictions, clock)
        self._label_counts = dict.fromkeys((*LABEL_OUTCOMES, "invalid"), 0)
        self._queue: deque[Observation] = deque()
        self._queue_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._drainer: threading.Thread | None = None
        self._closed = False
        self.dropped = 0
        """Observations dropped because the queue was full."""

    # ------------------------------------------------------------------ the observer hook

    def observe(
        self,
        request_id: str,
        version: int,
        features: np.ndarray,
        probabilities: np.ndarray,
        latency_s: float,
    ) -> None:
        """Queue one answered request; statistics are updated by a background thread."""
        with self._queue_lock:
            if len(self._queue) >= self.config.max_queued_observations:
                self.dropped += 1
                return
            self._queue.append(Observation(request_id, version, features, probabilities, latency_s))
            if self._drainer is None and not self._closed:
                self._drainer = threading.Thread(
                    target=self._drain_forever, name="trimtab-monitor", daemon=True
                )
                self._drainer.start()
        self._wakeup.set()

    def flush(self) -> None:
        """Ingest everything queued so far, in this thread."""
        while True:
            with self._queue_lock:
                batch = list(self._queue)
                self._queue.clear()
            if not batch:
                return
            self.ingest(batch)

    def close(self) -> None:
        """Stop the background thread after a last flush."""
        self._closed = True
        self._wakeup.set()
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        self.flush()

    def _drain_forever(self) -> None:
        while not self._closed:
            self._wakeup.wait(timeout=1.0)
            self._wakeup.clear()
            try:
                self.flush()
            except Exception:  # keep draining: one bad observation must not stop monitoring
                logger.exception("monitoring failed to ingest observations")

    # ------------------------------------------------------------------ updates

    def ingest(self, observations: Sequence[Observation]) -> None:
        """Update every statistic with ``observations``.

        The rows of each version are binned and added to its windows together (one
        ``searchsorted`` per feature per call, not per request), in arrival order.
        """
        by_version: dict[int, list[Observation]] = {}
        for observation in observations:
            by_version.setdefault(observation.version, []).append(observation)
        with self._lock:
            for version, group in by_version.items():
                state = self._state(version)
                if state is not None:
                    self._ingest_version(state, version, group)

    def _ingest_version(
        self, state: VersionState, version: int, observations: list[Observation]
    ) -> None:
        num_classes = state.labeled.num_classes
        num_features = len(state.reference.feature_names)
        valid = []
        for observation in observations:
            features = np.asarray(observation.features, dtype=np.float32)
            probabilities = np.asarray(observation.probabilities, dtype=np.float64)
            rows = len(features)
            if features.shape != (rows, num_features) or probabilities.shape != (
                rows,
                num_classes,
            ):
                logger.error(
                    "version %d: observation %s has shapes %s and %s; ignored",
                    version,
                    observation.request_id,
                    features.shape,
                    probabilities.shape,
                )
                continue
            valid.append((observation, features, probabilities))
        if not valid:
            return
        features = np.concatenate([entry[1] for entry in valid])
        probabilities = np.concatenate([entry[2] for entry in valid])
        predicted = probabilities.argmax(axis=1)
        confidences = probabilities.max(axis=1)
        slice_keys = state.slicer.keys(features)
        state.drift.add(features, predicted)
        state.requests += len(valid)
        state.rows += len(features)
        position = 0
        for observation, request_features, _ in valid:
            state.latencies.append(float(observation.latency_s))
            for row in range(len(request_features)):
                held_labels = self._store.add(
                    observation.request_id,
                    row,
                    version=version,
                    predicted=int(predicted[position]),
                    confidence=float(confidences[position]),
                    slice_keys=slice_keys[position],
                )
                for item in held_labels:  # labels that overtook their prediction
                    self._label_counts[self._add_label(item)] += 1
                position += 1

    def add_labels(self, items: Sequence[LabelItem]) -> dict[str, int]:
        """Join delayed labels to their predictions; returns how many met each fate
        (``joined``, ``pending``: held until its prediction arrives, ``duplicate``, ``late``,
        ``unknown``, and ``invalid`` for a class the version does not have). Never raises
        for an id it cannot place."""
        outcomes = dict.fromkeys((*LABEL_OUTCOMES, "invalid"), 0)
        with self._lock:
            for item in items:
                outcome = self._add_label(item)
                outcomes[outcome] += 1
                self._label_counts[outcome] += 1
        return outcomes

    def _add_label(self, item: LabelItem) -> str:
        outcome, prediction = self._store.claim(item.request_id, item.row)
        if outcome == "unknown" and self._store.hold(item.request_id, item.row, item):
            return "pending"  # joined when the prediction arrives (labels.LABEL_GRACE_S)
        if prediction is None:
            return outcome
        state = self._versions.get(prediction.version)
        if state is None:  # the version was dropped (max_versions) since
            return "late"
        label = class_index(item.label, state)
        if label is None:
            prediction.labeled = False  # a corrected label may still come
            return "invalid"
        state.labeled.add(
            LabeledRow(label, prediction.predicted, prediction.confidence, prediction.slice_keys)
        )
        return "joined"

    def reset_version(self, version: int) -> None:
        """Forget a version's windows (a fresh canary is judged on its own traffic only)."""
        with self._lock:
            self._versions.pop(version, None)

    # ------------------------------------------------------------------ reading

    def versions(self) -> list[int]:
        with self._lock:
            return list(self._versions)

    def window_stats(self, version: int, last: int) -> WindowStats:
        """What the rollback rules judge: the latest ``last`` rows of ``version``."""
        with self._lock:
            state = self._versions.get(version)
            if state is None:
                reference = None
                try:
                    reference = self._references(version)
                except Exception:  # unknown version: nothing measured
                    logger.debug("no reference for version %d", version, exc_info=True)
                offline = reference.offline_accuracy if reference is not None else None
                return WindowStats(offline_accuracy=offline)
            return state.window_stats(last)

    def version_summary(self, version: int, *, include_ks: bool = True) -> dict[str, Any] | None:
        """:meth:`VersionState.summary` of ``version``; None if it is not monitored."""
        with self._lock:
            state = self._versions.get(version)
            if state is None:
                return None
            return state.summary(self.config, include_ks=include_ks)

    def summary(self, *, include_ks: bool = True) -> dict[str, Any]:
        """Everything, per version, as plain JSON-able values."""
        with self._lock:
            return {
                "window_size": self.config.window_size,
                "retention_s": self.config.retention_s,
                "labels": {
                    **self._label_counts,
                    "pending_predictions": len(self._store),
                    "replaced_predictions": self._store.replaced,
                    "held_labels": self._store.held,
                    "expired_held_labels": self._store.expired_held,
                },
                "dropped_observations": self.dropped,
                "versions": {
                    str(version): self.version_summary(version, include_ks=include_ks)
                    for version in self._versions
                },
            }

    # ------------------------------------------------------------------ internals

    def _state(self, version: int) -> VersionState | None:
        state = self._versions.get(version)
        if state is not None:
            self._versions.move_to_end(version)
            return state
        try:
            reference = self._references(version)
        except Exception:
            logger.exception("cannot monitor version %d: no reference", version)
            return None
        state = self._versions[version] = VersionState(reference, self.config)
        while len(self._versions) > self.config.max_versions:
            dropped, _ = self._versions.popitem(last=False)
            logger.info("no longer monitoring version %d", dropped)
        return state
