"""The Ray Serve application: the FastAPI app of :mod:`serving.http_api` in every replica.

Each replica loads the alias's version in its constructor (so Serve routes nothing to it
before it can answer), follows the alias in a background task (the hot swap: see
:mod:`serving.inference`), batches requests with ``@serve.batch`` and re-hashes the served
file in ``check_health``: a file that no longer matches its manifest takes the replica out,
and its replacement falls back to the previous version.

Two ways in:

- ``serve run serving.app:build_app registry=.trimtab/registry alias=champion``: Serve's typed
  application builder (arguments are :class:`~serving.serve_config.ServeConfig` fields).
- :func:`run_service` (what ``trimtab serve`` calls): starts Serve's proxy on
  ``config.host:config.port`` and deploys; :func:`build_application` also takes a
  :class:`~serving.inference.PredictionObserver`, extra routers and a
  :class:`ReplicaExtension` (how monitoring adds its canary split and middleware).

Overload: a replica works on ``max_ongoing_requests`` at once, Serve queues up to
``max_queued_requests`` more, and its proxy answers the rest 503 with ``Retry-After``.
"""

# No ``from __future__ import annotations`` here: Serve reads build_app's parameter
# annotation at run time to turn ``serve run`` arguments into a ServeConfig.

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from fastapi import APIRouter, FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from serving.http_api import create_http_app, run_in_thread
from serving.inference import LoadedModel, ModelHolder, ModelUnavailableError, PredictionObserver
from serving.registry import ModelVersion, Registry, RegistryError
from serving.serve_config import ServeConfig

logger = logging.getLogger(__name__)

_SETTINGS_BUILD_APP_IGNORES = ("host", "port", "app_name", "route_prefix")


class ReplicaExtension(Protocol):
    """Extends every replica of :class:`InferenceService`; pickled into each replica.

    ``start`` is called once the replica has loaded its model; ``wrap_holder`` returns what
    the app reads the model through (an object with :class:`ModelHolder`'s interface: the
    replica keeps the original for the alias watcher and health checks); ``extend_app``
    may add middleware or routes to the built app.
    """

    def start(self) -> None: ...

    def wrap_holder(self, holder: ModelHolder) -> Any: ...

    def extend_app(self, app: FastAPI) -> None: ...


@serve.deployment(name="InferenceService")
@serve.ingress()
class InferenceService:
    """One replica: a :class:`ModelHolder` and the FastAPI app around it."""

    async def __init__(
        self,
        config: ServeConfig,
        observer: PredictionObserver | None = None,
        routers: Sequence[APIRouter] = (),
        extension: ReplicaExtension | None = None,
    ) -> None:
        self._config = config
        self._observer = observer
        self._routers = list(routers)
        self._extension = extension
        self._holder = ModelHolder(
            Registry(config.registry),
            config.alias,
            previous_alias=config.previous_alias,
            candidate_alias=config.candidate_alias,
            intra_op_num_threads=config.intra_op_num_threads,
        )
        model = await asyncio.to_thread(self._holder.load)
        logger.info("replica serving %s version %d", model.name, model.version)
        self._watcher = asyncio.get_running_loop().create_task(
            self._holder.watch_alias(config.alias_poll_interval_s)
        )
        self._run_batch.set_max_batch_size(config.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        if extension is not None:
            extension.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        batching = self._config.max_batch_size > 1
        extension = self._extension
        app = create_http_app(
            self._holder if extension is None else extension.wrap_holder(self._holder),
            self._config,
            run_model=self._run_batched if batching else run_in_thread,
            observer=self._observer,
            routers=self._routers,
            echo_request_id=False,  # Serve's proxy sets x-request-id on every response
        )
        if extension is not None:
            extension.extend_app(app)
        return app

    async def _run_batched(self, model: LoadedModel, features: np.ndarray) -> np.ndarray:
        return await self._run_batch((model, features))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _run_batch(self, requests: list[tuple[LoadedModel, np.ndarray]]) -> list[np.ndarray]:
        # Requests validated against different versions (a swap mid-batch) run separately.
        results: list[Any] = [None] * len(requests)
        by_model: dict[int, list[int]] = {}
        for index, (model, _) in enumerate(requests):
            by_model.setdefault(id(model), []).append(index)
        for indices in by_model.values():
            model = requests[indices[0]][0]
            features = np.concatenate([requests[index][1] for index in indices])
            logits = await asyncio.to_thread(model.run, features)
            offsets = np.cumsum([len(requests[index][1]) for index in indices])[:-1]
            for index, part in zip(indices, np.split(logits, offsets), strict=True):
                results[index] = part
        return results

    async def check_health(self) -> None:
        """Raise (replica out) if the served file no longer matches its manifest hash."""
        await asyncio.to_thread(self._holder.verify_current)


def check_registry(config: ServeConfig) -> ModelVersion:
    """The version ``config.alias`` points to, checked in the caller before Serve starts any
    replica; :class:`~serving.inference.ModelUnavailableError` names what is missing."""
    if not (config.registry / "versions").is_dir():
        raise ModelUnavailableError(f"no model registry at {config.registry}")
    try:
        return Registry(config.registry).get(config.alias)
    except RegistryError as error:
        raise ModelUnavailableError(str(error)) from error


def build_application(
    config: ServeConfig,
    *,
    observer: PredictionObserver | None = None,
    routers: Sequence[APIRouter] = (),
    extension: ReplicaExtension | None = None,
) -> Application:
    """The Serve application for ``config``; deploy it with ``serve.run``.

    Raises :class:`~serving.inference.ModelUnavailableError` if the registry or the alias
    does not exist. ``observer``, ``routers`` and ``extension`` are pickled into every
    replica (together, so one object may serve as both observer and extension).
    """
    check_registry(config)
    replicas: dict[str, Any]
    if config.autoscaling_config is not None:
        replicas = {"autoscaling_config": config.autoscaling_config}
    else:
        replicas = {"num_replicas": config.num_replicas}
    deployment = InferenceService.options(
        **replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s),
        health_check_period_s=config.health_check_period_s,
        health_check_timeout_s=config.health_check_timeout_s,
        ray_actor_options=dict(config.ray_actor_options),
    )
    return deployment.bind(config, observer, list(routers), extension)


def build_app(config: ServeConfig) -> Application:
    """Serve's typed application builder: ``serve run serving.app:build_app registry=DIR``.

    ``host``, ``port``, ``app_name`` and ``route_prefix`` belong to whoever starts Serve
    (``serve run --host/--port/--route-prefix/--name``); setting them here only warns.
    """
    if isinstance(config, dict):  # called directly rather than through Serve
        config = ServeConfig.model_validate(config)
    for name in _SETTINGS_BUILD_APP_IGNORES:
        if name in config.model_fields_set:
            logger.warning(
                "build_app ignores %s=%r; serve run sets it", name, getattr(config, name)
            )
    return build_application(config)


def run_service(
    config: ServeConfig,
    *,
    observer: PredictionObserver | None = None,
    routers: Sequence[APIRouter] = (),
    extension: ReplicaExtension | None = None,
) -> str:
    """Start Serve's proxy on ``config.host:config.port``, deploy, and return the URL.

    Needs a running Ray (``ray.init``); does not block. Stop with ``serve.shutdown()``.
    """
    application = build_application(config, observer=observer, routers=routers, extension=extension)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(
        application,
        name=config.app_name,
        route_prefix=config.route_prefix,
        blocking=False,
    )
    return config.url
