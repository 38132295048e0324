"""The replica side of monitoring: observe predictions, count statuses, split canary traffic.

:class:`ReplicaMonitor` is the prediction observer of every replica and, with the monitoring
routes (:class:`serving.monitoring.extension.MonitoringExtension`), what monitoring adds to the
app (:class:`serving.http_api.ServiceExtension`). ``observe`` only counts the status and
appends the prediction to a bounded queue; a background thread wakes every
``flush_interval_s``, records the per-request Prometheus metrics, ships the observations to
the monitoring service and gets back the canary's routing, loading the canary's model when it
changes. So the request path pays for a queue append and, under a canary, one hash of the
request id. The label routes flush first, so a label posted right after its prediction finds
it (:meth:`ReplicaMonitor.flush` is serialised).

:class:`CanaryChooser` is the app's :class:`~serving.inference.ModelChooser` under
monitoring: the champion, or the canary for the canary's share of request ids.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.inference import AliasMove, LoadedModel, ModelHolder, PredictionRecord, load_model
from serving.monitoring.canary import canary_fraction
from serving.monitoring.client import MonitoringClient, Routing
from serving.monitoring.config import MonitoringConfig
from serving.monitoring.prom import MetricsRecorder, NullRecorder
from serving.monitoring.records import Observation
from serving.registry import Registry, RegistryError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Canary:
    version: int
    share: float
    model: LoadedModel


class ReplicaMonitor:
    """The observer and canary router of one replica.

    Args:
        client: how to reach the monitoring service.
        config: monitoring settings (flush interval, queue bound).
        registry: the registry directory (to load the canary's model).
        intra_op_num_threads: onnxruntime threads of the canary's session.
        recorder: Prometheus metrics of the replica.
    """

    def __init__(
        self,
        client: MonitoringClient,
        config: MonitoringConfig,
        registry: Path | str,
        *,
        intra_op_num_threads: int = 1,
        recorder: MetricsRecorder | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.registry_root = Path(registry)
        self.intra_op_num_threads = intra_op_num_threads
        self.recorder = recorder if recorder is not None else NullRecorder()
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._observations: deque[Observation] = deque()
        self._statuses: Counter[tuple[str, str]] = Counter()
        self._canary: _Canary | None = None
        self._failed_canary: int | None = None
        self._flush_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def __getstate__(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "config": self.config,
            "registry_root": self.registry_root,
            "intra_op_num_threads": self.intra_op_num_threads,
            "recorder": self.recorder,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # ------------------------------------------------------------------ request path

    def observe(self, record: PredictionRecord) -> None:
        """The observer hook: count the status, queue an answered prediction."""
        key = ("none" if record.version is None else str(record.version), str(record.status))
        answered = (
            record.status == 200
            and record.request_id is not None
            and record.version is not None
            and record.features is not None
            and record.probabilities is not None
        )
        with self._lock:
            self._statuses[key] += 1
            if answered:
                if len(self._observations) >= self.config.max_queued_observations:
                    self.dropped += 1
                else:
                    self._observations.append(
                        Observation(
                            record.request_id,
                            record.version,
                            record.features,
                            record.probabilities,
                            record.latency_s,
                        )
                    )
        self.start()

    def choose(
        self, champion: LoadedModel | None, request_id: str, pinned_version: int | None
    ) -> LoadedModel | None:
        """The model that answers this request: the champion or the canary."""
        canary = self._canary
        if champion is None or canary is None or canary.version == champion.version:
            return champion
        if pinned_version is not None:
            return canary.model if pinned_version == canary.version else champion
        fraction = canary_fraction(request_id, canary.version)
        return canary.model if fraction < canary.share else champion

    # ------------------------------------------------------------------ service extension

    def observer(self) -> ReplicaMonitor:
        return self

    def chooser(self, holder: ModelHolder) -> CanaryChooser:
        """The replica's model chooser: the canary split over ``holder``."""
        return CanaryChooser(holder, self)

    async def alias_moved(self, move: AliasMove) -> None:
        """An admin route moved the served alias: a canary of that version has become the
        champion (the service ends it)."""
        import asyncio

        await asyncio.to_thread(self.client.champion_moved, move.version)

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        """Start the flushing thread (idempotent; the first observation also starts it)."""
        if self._thread is not None or self._closed.is_set():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._flush_forever, name="trimtab-replica-monitor", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def flush(self) -> None:
        """Record, ship and refresh the canary routing once, in this thread; returns once
        everything observed before the call has reached the service (or was dropped)."""
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            observations = list(self._observations)
            self._observations.clear()
            statuses = self._statuses
            self._statuses = Counter()
            dropped, self.dropped = self.dropped, 0
        self._record(observations, statuses, dropped)
        try:
            routing = self.client.ingest(observations)
        except Exception as error:
            self.recorder.inc("trimtab_monitoring_dropped_total", len(observations), {})
            logger.warning(
                "monitoring service unreachable (%s); %d observations dropped",
                type(error).__name__,
                len(observations),
            )
            return
        self._apply_routing(routing)

    def _flush_forever(self) -> None:
        while not self._closed.is_set():
            self._closed.wait(self.config.flush_interval_s)
            try:
                self.flush()
            except Exception:  # keep flushing: monitoring must never stop serving
                logger.exception("replica monitoring flush failed")

    def _record(
        self,
        observations: list[Observation],
        statuses: Counter[tuple[str, str]],
        dropped: int,
    ) -> None:
        recorder = self.recorder
        for (version, status), count in statuses.items():
            recorder.inc("trimtab_requests_total", count, {"version": version, "status": status})
        if dropped:
            recorder.inc("trimtab_monitoring_dropped_total", dropped, {})
        classes: Counter[tuple[str, int]] = Counter()
        for observation in observations:
            tags = {"version": str(observation.version)}
            recorder.observe("trimtab_request_latency_seconds", observation.latency_s, tags)
            recorder.observe("trimtab_batch_size", len(observation.features), tags)
            predicted = np.asarray(observation.probabilities).argmax(axis=1)
            for class_index, count in zip(*np.unique(predicted, return_counts=True), strict=True):
                classes[(tags["version"], int(class_index))] += int(count)
        for (version, class_index), count in classes.items():
            recorder.inc(
                "trimtab_predicted_class_total",
                count,
                {"version": version, "class": str(class_index)},
            )

    def _apply_routing(self, routing: Routing) -> None:
        if routing is None:
            if self._canary is not None:
                logger.warning("canary version %d ended on this replica", self._canary.version)
            self._canary, self._failed_canary = None, None
            return
        version, share = int(routing["version"]), float(routing["share"])
        current = self._canary
        if current is not None and current.version == version:
            if current.share != share:
                self._canary = _Canary(version, share, current.model)
            return
        if self._failed_canary == version:
            return
        started = time.perf_counter()
        try:
            model = load_model(
                Registry(self.registry_root).get(version),
                intra_op_num_threads=self.intra_op_num_threads,
            )
        except RegistryError as error:
            logger.error("cannot load canary version %d, serving the champion: %s", version, error)
            self._canary, self._failed_canary = None, version
            return
        self._canary = _Canary(version, share, model)
        logger.warning(
            "canary version %d loaded in %.2f s; takes %.0f%% of traffic",
            version,
            time.perf_counter() - started,
            share * 100,
        )


class CanaryChooser:
    """A :class:`~serving.inference.ModelChooser`: the holder's champion, or the canary for
    the canary's share of request ids (the same id always lands on the same version)."""

    def __init__(self, holder: ModelHolder, replica: ReplicaMonitor) -> None:
        self.holder = holder
        self.replica = replica

    def choose(self, request_id: str, pinned_version: int | None) -> LoadedModel | None:
        return self.replica.choose(self.holder.current, request_id, pinned_version)
