"""Typed calls to the monitoring service, in this process or as a named Ray actor.

:class:`MonitoringClient` is the service's API as replicas and routes use it; each method
names its arguments and result. :class:`LocalServiceClient` calls a
:class:`~serving.monitoring.service.MonitoringService` in this process (tests, the plain
uvicorn benchmark); :class:`ActorServiceClient` calls the named actor and turns the service's
own refusals back into :class:`~serving.monitoring.canary.CanaryError` (never Ray's task
traceback).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from serving.monitoring.canary import CanaryError
from serving.monitoring.records import LabelItem, Observation

Routing = dict[str, Any] | None
"""The canary's ``{"version", "share"}``, or ``None`` without a canary."""


class MonitoringClient(Protocol):
    """The methods of :class:`~serving.monitoring.service.MonitoringService`."""

    def ingest(self, observations: Sequence[Observation]) -> Routing: ...

    def add_labels(self, items: Sequence[LabelItem]) -> dict[str, int]: ...

    def summary(self, include_ks: bool = True) -> dict[str, Any]: ...

    def start_canary(self, version: int, share: float | None = None) -> dict[str, Any]: ...

    def stop_canary(self) -> dict[str, Any]: ...

    def promote_canary(self) -> dict[str, Any]: ...

    def champion_moved(self, version: int) -> None: ...


class LocalServiceClient:
    """The service in this process."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def ingest(self, observations: Sequence[Observation]) -> Routing:
        return self.service.ingest(observations)

    def add_labels(self, items: Sequence[LabelItem]) -> dict[str, int]:
        return self.service.add_labels(items)

    def summary(self, include_ks: bool = True) -> dict[str, Any]:
        return self.service.summary(include_ks)

    def start_canary(self, version: int, share: float | None = None) -> dict[str, Any]:
        return self.service.start_canary(version, share)

    def stop_canary(self) -> dict[str, Any]:
        return self.service.stop_canary()

    def promote_canary(self) -> dict[str, Any]:
        return self.service.promote_canary()

    def champion_moved(self, version: int) -> None:
        self.service.champion_moved(version)


class ActorServiceClient:
    """The service as a named Ray actor; the handle is looked up in the calling process and
    again after the actor was lost (it may have been restarted). Calls block: call them from
    a thread."""

    def __init__(self, name: str, namespace: str, timeout_s: float = 30.0) -> None:
        self.name = name
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "namespace": self.namespace, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def _actor(self) -> Any:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=self.namespace)
        return self._handle

    def _get(self, reference: Any) -> Any:
        import ray

        try:
            return ray.get(reference, timeout=self.timeout_s)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, CanaryError):  # the service's refusal, in its own words
                raise CanaryError(*error.cause.args) from None
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            self._handle = None
            raise

    def ingest(self, observations: Sequence[Observation]) -> Routing:
        return self._get(self._actor().ingest.remote(list(observations)))

    def add_labels(self, items: Sequence[LabelItem]) -> dict[str, int]:
        return self._get(self._actor().add_labels.remote(list(items)))

    def summary(self, include_ks: bool = True) -> dict[str, Any]:
        return self._get(self._actor().summary.remote(include_ks))

    def start_canary(self, version: int, share: float | None = None) -> dict[str, Any]:
        return self._get(self._actor().start_canary.remote(version, share))

    def stop_canary(self) -> dict[str, Any]:
        return self._get(self._actor().stop_canary.remote())

    def promote_canary(self) -> dict[str, Any]:
        return self._get(self._actor().promote_canary.remote())

    def champion_moved(self, version: int) -> None:
        self._get(self._actor().champion_moved.remote(version))
