"""The replica side of monitoring: observe predictions, count statuses, route canary traffic.

:class:`ReplicaMonitor` is the :class:`~serving.inference.PredictionObserver` and the
:class:`~serving.app.ReplicaExtension` every replica runs. ``observe`` and ``record_status``
only append to a bounded queue; a background thread wakes every ``flush_interval_s``,
records the per-request Prometheus metrics, ships the observations to the monitoring
service and gets back the canary's routing, loading the canary's model when it changes.
So the request path pays for a queue append and, under a canary, one hash of the request id.

:class:`CanaryHolder` wraps the replica's :class:`~serving.inference.ModelHolder`: its
``current`` is the champion, or the canary for the canary's share of prediction requests.
:class:`MonitoringMiddleware` gives each prediction request the context that choice needs
(the client's ``x-request-id``, a version named in the path) and counts its response status.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.http_api import REQUEST_ID_SCOPE_KEY
from serving.inference import AliasMove, LoadedModel, ModelHolder, load_model
from serving.monitoring.canary import canary_fraction
from serving.monitoring.config import MonitoringConfig
from serving.monitoring.monitor import Observation
from serving.monitoring.prom import MetricsRecorder, NullRecorder
from serving.registry import Registry, RegistryError

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

_PREDICTION_PATH = re.compile(r"^(?:.*/predict|.*/v2/models/[^/]+(?:/versions/([^/]+))?/infer)$")


class ServiceClient(Protocol):
    """Calls a :class:`~serving.monitoring.service.MonitoringService` method by name."""

    def call(self, method: str, *args: Any) -> Any: ...


class LocalServiceClient:
    """The service in this process (tests, the plain-uvicorn benchmark)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.service, method)(*args)


class ActorServiceClient:
    """The service as a named Ray actor; the handle is looked up in the calling process."""

    def __init__(self, name: str, namespace: str, timeout_s: float = 30.0) -> None:
        self.name = name
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "namespace": self.namespace, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def call(self, method: str, *args: Any) -> Any:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=self.namespace)
        try:
            return ray.get(getattr(self._handle, method).remote(*args), timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            self._handle = None  # look it up again next time: it may have been restarted
            raise


@dataclass
class RequestContext:
    """What the canary split needs to know about the prediction request being answered."""

    scope: dict[str, Any]
    """The request's ASGI scope: the app puts the request's id in it before the model is
    chosen (the body's ``id`` on v2 infer routes)."""
    pinned_version: int | None
    served_version: int | None = None

    @property
    def request_id(self) -> str | None:
        """The id the labels will name: the app's, else the ``x-request-id`` header."""
        return self.scope.get(REQUEST_ID_SCOPE_KEY) or Headers(scope=self.scope).get("x-request-id")


_REQUEST: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "trimtab_monitoring_request", default=None
)


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
        client: ServiceClient,
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

    def observe(
        self,
        request_id: str,
        version: int,
        features: np.ndarray,
        probabilities: np.ndarray,
        latency_s: float,
    ) -> None:
        """The observer hook: queue the prediction (called after the response is sent)."""
        observation = Observation(request_id, version, features, probabilities, latency_s)
        with self._lock:
            if len(self._observations) >= self.config.max_queued_observations:
                self.dropped += 1
                return
            self._observations.append(observation)
        self.start()

    def record_status(self, status: int, version: int | None) -> None:
        """Count one prediction request's HTTP status (called by the middleware)."""
        key = ("none" if version is None else str(version), str(status))
        with self._lock:
            self._statuses[key] += 1

    def select(self, context: RequestContext, champion: LoadedModel) -> LoadedModel:
        """The model that answers this request: the champion or the canary."""
        canary = self._canary
        if canary is None or canary.version == champion.version:
            return champion
        if context.pinned_version is not None:
            return canary.model if context.pinned_version == canary.version else champion
        if context.request_id is not None:
            fraction = canary_fraction(context.request_id, canary.version)
        else:
            fraction = random.random()
        return canary.model if fraction < canary.share else champion

    # ------------------------------------------------------------------ replica extension

    def wrap_holder(self, holder: ModelHolder) -> CanaryHolder:
        """The replica's holder with the canary split (:class:`serving.app.ReplicaExtension`)."""
        return CanaryHolder(holder, self)

    def extend_app(self, app: FastAPI) -> None:
        """Add :class:`MonitoringMiddleware`: the canary split's context and status counts."""
        app.add_middleware(MonitoringMiddleware, replica=self)

    # ------------------------------------------------------------------ service API

    def call(self, method: str, *args: Any) -> Any:
        """Call the monitoring service (blocking: routes run it in a thread)."""
        return self.client.call(method, *args)

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
        """Record, ship and refresh the canary routing once, in this thread."""
        with self._lock:
            observations = list(self._observations)
            self._observations.clear()
            statuses = self._statuses
            self._statuses = Counter()
            dropped, self.dropped = self.dropped, 0
        self._record(observations, statuses, dropped)
        try:
            routing = self.client.call("ingest", observations)
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

    def _apply_routing(self, routing: dict[str, Any] | None) -> None:
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


class CanaryHolder:
    """A :class:`~serving.inference.ModelHolder` whose ``current`` splits prediction requests
    between the champion and the canary. Everything else is the wrapped holder's."""

    def __init__(self, holder: ModelHolder, replica: ReplicaMonitor) -> None:
        self.holder = holder
        self.replica = replica

    @property
    def current(self) -> LoadedModel | None:
        champion = self.holder.current
        context = _REQUEST.get()
        if champion is None or context is None:
            return champion
        model = self.replica.select(context, champion)
        context.served_version = model.version
        return model

    @property
    def registry(self) -> Registry:
        return self.holder.registry

    async def promote(self, version: int | None = None) -> AliasMove:
        """The wrapped holder's promote; a promoted canary stops being a canary."""
        move = await self.holder.promote(version)
        try:
            await asyncio.to_thread(self.replica.call, "champion_moved", move.version)
        except Exception:
            logger.exception("could not tell the monitoring service about the promotion")
        return move

    async def rollback(self, version: int | None = None) -> AliasMove:
        return await self.holder.rollback(version)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.holder, name)


class MonitoringMiddleware:
    """For each prediction request (``POST`` to ``/predict`` or ``.../infer``): give the
    canary split its context, and count the response status by the version that answered."""

    def __init__(self, app: ASGIApp, *, replica: ReplicaMonitor) -> None:
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope.get("method") == "POST":
            match = _PREDICTION_PATH.match(scope.get("path", ""))
        if match is None:
            await self.app(scope, receive, send)
            return
        pinned = match.group(1)
        context = RequestContext(
            scope=scope,
            pinned_version=int(pinned) if pinned is not None and pinned.isdigit() else None,
        )
        status = 500

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = _REQUEST.set(context)
        try:
            await self.app(scope, receive, send_and_count)
        finally:
            _REQUEST.reset(token)
            self.replica.record_status(status, context.served_version)
