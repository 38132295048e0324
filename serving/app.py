"""The Ray Serve application: the FastAPI app of :mod:`serving.http_api` in every replica.

Each replica loads the alias's version in its constructor (so Serve routes nothing to it
before it can answer), follows the alias in a background task (the hot swap: see
:mod:`serving.inference`), batches requests with ``@serve.batch`` and re-hashes the served
file in ``check_health``: a file that no longer matches its manifest takes the replica out,
and its replacement falls back to the previous version. A response leaves the replica in one
socket write (:mod:`serving.http_write`), so a replica that dies mid-request leaves nothing a
client could mistake for an answer, and HAProxy retries the request on another replica.

Two ways in:

- ``serve run serving.app:build_app registry=.trimtab/registry alias=champion``: Serve's typed
  application builder (arguments are :class:`~serving.serve_config.ServeConfig` fields).
- :func:`run_service` (what ``trimtab serve`` calls): starts Serve's HTTP ingress on
  ``config.host:config.port`` (HAProxy, the replicas' own servers or Serve's proxy, as the
  Ray cluster was started: :mod:`serving.ingress`) and deploys; :func:`build_application`
  also takes a :class:`ServiceExtension` (how monitoring adds its observer, canary chooser
  and routes).

Every replica gets the edge limits of ``config`` in its environment
(:mod:`serving.http_edge`), which Serve applies in front of the app in the replica's own HTTP
server. Overload: a replica works on ``max_ongoing_requests`` at once, Serve queues up to
``max_queued_requests`` more, and answers the rest 503 with ``Retry-After``.
"""

# No ``from __future__ import annotations`` here: Serve reads build_app's parameter
# annotation at run time to turn ``serve run`` arguments into a ServeConfig.

import asyncio
import logging
import time
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from serving.http_api import (
    ServiceExtension,
    create_http_app,
    edge_config,
    extension_options,
    run_in_thread,
)
from serving.http_write import write_headers_with_body
from serving.inference import LoadedModel, ModelHolder, ModelUnavailableError
from serving.ingress import EDGE_CALLBACK
from serving.registry import ModelVersion, Registry, RegistryError
from serving.serve_config import ServeConfig

logger = logging.getLogger(__name__)

_SETTINGS_BUILD_APP_IGNORES = ("host", "port", "app_name", "route_prefix")


@serve.deployment(name="InferenceService")
@serve.ingress()
class InferenceService:
    """One replica: a :class:`ModelHolder` and the FastAPI app around it."""

    async def __init__(
        self, config: ServeConfig, extension: ServiceExtension | None = None
    ) -> None:
        write_headers_with_body()  # before Serve starts this replica's own HTTP server
        self._config = config
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
        run_model = self._run_batched if batching else run_in_thread
        extension = self._extension
        if extension is None:
            return create_http_app(
                self._holder, self._config, run_model=run_model, echo_request_id=False
            )
        return create_http_app(
            self._holder,
            self._config,
            run_model=run_model,
            echo_request_id=False,  # Serve sets x-request-id on every response
            **extension_options(extension, self._holder),
        )

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


def replica_actor_options(config: ServeConfig) -> dict[str, Any]:
    """``config.ray_actor_options`` with the edge limits and the edge callback in the
    replica's environment (Serve applies them in the replica's own HTTP server)."""
    options = dict(config.ray_actor_options)
    runtime_env = dict(options.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars.update(edge_config(config).environment())
    env_vars.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", EDGE_CALLBACK)
    runtime_env["env_vars"] = env_vars
    options["runtime_env"] = runtime_env
    return options


def build_application(
    config: ServeConfig, *, extension: ServiceExtension | None = None
) -> Application:
    """The Serve application for ``config``; deploy it with ``serve.run``.

    Raises :class:`~serving.inference.ModelUnavailableError` if the registry or the alias
    does not exist. ``extension`` is pickled into every replica.
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
        ray_actor_options=replica_actor_options(config),
    )
    return deployment.bind(config, extension)


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


def run_service(config: ServeConfig, *, extension: ServiceExtension | None = None) -> str:
    """Start Serve's HTTP ingress on ``config.host:config.port``, deploy, and return the URL.

    Needs a running Ray (``ray.init``, with the ingress environment of :mod:`serving.ingress`
    set before it); does not block. Stop with ``serve.shutdown()``.
    """
    application = build_application(config, extension=extension)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(
        application,
        name=config.app_name,
        route_prefix=config.route_prefix,
        blocking=False,
    )
    wait_until_reachable(config.url)
    return config.url


def wait_until_reachable(url: str, timeout_s: float = 90.0) -> bool:
    """Poll ``url``'s readiness route until it answers 200; whether it did within ``timeout_s``.

    ``serve.run`` returns once the replicas are up, but the ingress in front of them (HAProxy,
    reconfigured by an actor that can be slow to report ready on a busy machine) may route
    to them only seconds later; until then a request gets the fallback proxy's 404.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            logger.warning("%s did not answer /v2/health/ready within %.0f s", url, timeout_s)
            return False
        time.sleep(0.25)
