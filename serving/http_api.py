"""The FastAPI app of the inference service, independent of Ray Serve.

:func:`create_http_app` assembles module-level routers around a
:class:`~serving.http_service.ServiceState`. Ray Serve mounts it in every replica
(:mod:`serving.app`), the benchmark serves it with plain uvicorn, and the tests drive it with
FastAPI's ``TestClient``: the same routes and checks everywhere. Serve-only behaviour comes in
through arguments: ``run_model`` (dynamic batching), ``chooser`` (the canary split) and
``echo_request_id`` (Serve already echoes ``x-request-id``).

Routes (``{name}`` is the served model's name):

========================================  ====================================================
``POST /predict``                         ``{"instances": [[...], ...]}`` → labels,
                                          probabilities, model version, request id
``POST /v2/models/{name}/infer``          Open Inference Protocol v2 inference (also
                                          ``/v2/models/{name}/versions/{version}/infer``)
``GET /v2/models/{name}``                 v2 model metadata (inputs, outputs, versions)
``GET /v2/models/{name}/ready``           200 once the model is loaded, else 503
``GET /v2``                               v2 server metadata
``GET /v2/health/live``                   200 while the process answers
``GET /v2/health/ready``                  200 once the model is loaded, else 503
``POST /admin/promote``                   bearer token; move the alias to a version
``POST /admin/rollback``                  bearer token; move the alias back
========================================  ====================================================

Statuses: 400 malformed (body not JSON, bad ``x-request-id``), 401 admin without the token,
404 unknown model, version or route, 405 wrong method, 409 admin move refused, 413 body over
``max_body_bytes`` (from ``Content-Length`` before reading, or the moment a chunked body
crosses it), 415 body not ``application/json``, 422 JSON that is not a valid request (the
message names the field), 431 too many or too large headers, 500 a bug, 503 no model loaded
yet (with ``Retry-After``). Every one carries ``{"error": "..."}`` (:mod:`serving.http_errors`);
the header and body limits are :class:`~serving.http_edge.EdgeLimits`, which also runs in
front of Serve.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI

from serving import routes_admin, routes_predict, routes_v2
from serving.http_edge import EdgeConfig, EdgeLimits
from serving.http_errors import add_error_handlers
from serving.http_service import RunModel, ServiceState, run_in_thread
from serving.inference import (
    AliasMove,
    ModelChooser,
    ModelHolder,
    NoOpObserver,
    PredictionObserver,
)
from serving.serve_config import ServeConfig

logger = logging.getLogger(__name__)

__all__ = [
    "RunModel",
    "ServiceExtension",
    "create_http_app",
    "edge_config",
    "extension_options",
    "run_in_thread",
]


class ServiceExtension(Protocol):
    """What an extension (monitoring) adds to the app: an observer, a model chooser, routes
    and a listener for admin alias moves. In Serve it is pickled into every replica, and
    ``start`` is called once the replica has loaded its model."""

    def start(self) -> None: ...

    def observer(self) -> PredictionObserver: ...

    def chooser(self, holder: ModelHolder) -> ModelChooser: ...

    def routers(self) -> Sequence[APIRouter]: ...

    def admin_routers(self) -> Sequence[APIRouter]: ...

    async def alias_moved(self, move: AliasMove) -> None: ...


def extension_options(extension: ServiceExtension, holder: ModelHolder) -> dict[str, Any]:
    """The :func:`create_http_app` arguments that attach ``extension``."""
    return {
        "chooser": extension.chooser(holder),
        "observer": extension.observer(),
        "routers": extension.routers(),
        "admin_routers": extension.admin_routers(),
        "on_alias_move": extension.alias_moved,
    }


def edge_config(config: ServeConfig) -> EdgeConfig:
    """The edge limits of ``config``."""
    return EdgeConfig(
        max_body_bytes=config.max_body_bytes,
        max_header_bytes=config.max_header_bytes,
        max_headers=config.max_headers,
    )


def create_http_app(
    holder: ModelHolder,
    config: ServeConfig,
    *,
    chooser: ModelChooser | None = None,
    run_model: RunModel = run_in_thread,
    observer: PredictionObserver | None = None,
    routers: Sequence[APIRouter] = (),
    admin_routers: Sequence[APIRouter] = (),
    on_alias_move: Callable[[AliasMove], Awaitable[None]] | None = None,
    echo_request_id: bool = True,
) -> FastAPI:
    """The inference service's FastAPI app around ``holder``.

    Args:
        holder: the served model (may still be empty: prediction routes answer 503).
        config: limits, names and the admin token.
        chooser: picks each prediction's model (default: ``holder``'s current model).
        run_model: how a validated batch reaches the model (Serve passes its batcher).
        observer: told about every prediction request, its version and status.
        routers: more routes to mount (monitoring, ...).
        admin_routers: more admin routes, mounted only with an admin token.
        on_alias_move: awaited after an admin route moved the alias.
        echo_request_id: set ``x-request-id`` on responses (off behind Serve).
    """
    app = FastAPI(
        title="trimtab inference",
        summary="Open Inference Protocol v2 and a simple /predict over a registry alias.",
        version=routes_v2.API_VERSION,
    )
    app.state.service = ServiceState(
        holder=holder,
        config=config,
        chooser=chooser if chooser is not None else holder,
        observer=observer if observer is not None else NoOpObserver(),
        run_model=run_model,
        echo_request_id=echo_request_id,
        on_alias_move=on_alias_move,
    )
    app.add_middleware(EdgeLimits, config=edge_config(config))
    add_error_handlers(app)
    app.include_router(routes_predict.router)
    app.include_router(routes_v2.router)
    for router in routers:
        app.include_router(router)
    if config.admin_token is not None:
        app.include_router(routes_admin.router)
        for router in admin_routers:
            app.include_router(router)
    else:
        logger.warning("no admin token (set $TRIMTAB_ADMIN_TOKEN): admin routes are off")
    _add_model_limits_to_openapi(app, holder, config)
    return app


def _add_model_limits_to_openapi(app: FastAPI, holder: ModelHolder, config: ServeConfig) -> None:
    """Publish the row limit, the value range and the loaded model's feature count in
    ``/openapi.json``, so that clients (and schemathesis) see which bodies are valid."""
    value_range = {
        "minimum": -config.max_abs_feature_value,
        "maximum": config.max_abs_feature_value,
    }

    def openapi() -> dict[str, Any]:
        schema = copy.deepcopy(FastAPI.openapi(app))
        components = schema["components"]["schemas"]
        instances = components["PredictRequest"]["properties"]["instances"]
        instances["maxItems"] = config.max_instances_per_request
        instances["items"]["items"].update(value_range)
        data = components["InferInputTensor"]["properties"]["data"]["items"]["anyOf"]
        data[0].update(value_range)
        data[1]["items"].update(value_range)
        model = holder.current
        if model is not None:
            instances["items"]["minItems"] = model.num_features
            instances["items"]["maxItems"] = model.num_features
            instances["examples"] = [[[0.0] * model.num_features]]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
