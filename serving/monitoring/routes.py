"""HTTP routes of monitoring, as a FastAPI router mounted beside the inference routes.

========================================  ====================================================
``POST /labels``                          delayed labels: ``{"id": ..., "label": ...}`` or
                                          ``{"labels": [{"id": ..., "label": ...}, ...]}``
``POST /v2/models/{name}/labels``         the same, for the named model
``GET /monitoring/summary``               drift, online metrics, slices, canary, per version
``POST /admin/canary``                    bearer token; ``{"version": N, "share": 0.1}``
``DELETE /admin/canary``                  bearer token; all traffic back to the champion
``POST /admin/canary/promote``            bearer token; the canary becomes the champion
========================================  ====================================================

A label is ``{"id": "<request id>", "label": <class index or class name>, "row": 0}``
(``row`` picks a row of a request that carried several). Labels whose id is unknown, late or
already labeled are counted in the answer, never refused. Statuses: 200, 401 (admin without
the token), 404 (unknown model or version), 409 (canary refused), 413/415/422 (bad body),
503 (monitoring service unreachable); every error carries ``{"error": "..."}``.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations.

import asyncio
import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from serving.http_api import ApiError
from serving.http_schemas import REQUEST_ID_PATTERN, StrictInt
from serving.monitoring.canary import CanaryError
from serving.monitoring.monitor import LabelItem
from serving.monitoring.replica import ReplicaMonitor

logger = logging.getLogger(__name__)


class Label(BaseModel):
    """The true class of one prediction row."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=REQUEST_ID_PATTERN, description="The prediction's request id.")
    label: StrictInt | str = Field(description="Class index, or class name.")
    row: StrictInt = Field(default=0, ge=0, description="Row of a multi-row request.")


class LabelBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[Label] = Field(min_length=1)


def _label_body_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "labels" in value else "single"


LabelBody = Annotated[
    Annotated[Label, Tag("single")] | Annotated[LabelBatch, Tag("batch")],
    Discriminator(_label_body_kind),
]
"""One label, or ``{"labels": [...]}``; errors name the fields of the form given."""


class LabelReceipt(BaseModel):
    """How many labels met each fate."""

    received: int
    joined: int
    duplicate: int
    late: int
    unknown: int
    invalid: int = Field(description="A class the model does not have.")


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: StrictInt = Field(ge=1)
    share: float | None = Field(default=None, gt=0.0, lt=1.0)


def _replica(request: Request) -> ReplicaMonitor:
    observer = request.app.state.observer
    if not isinstance(observer, ReplicaMonitor):
        raise ApiError(503, "monitoring is not attached to this app")
    return observer


async def _call(request: Request, method: str, *args: Any) -> Any:
    replica = _replica(request)
    try:
        return await asyncio.to_thread(replica.call, method, *args)
    except CanaryError as error:
        raise ApiError(409, str(error)) from None
    except Exception as error:  # the service is down or restarting; serving goes on
        logger.warning("monitoring service call %s failed: %r", method, error)
        raise ApiError(
            503, f"monitoring service unavailable ({type(error).__name__})", {"Retry-After": "1"}
        ) from None


def monitoring_router(*, admin_token: str | None, max_labels_per_request: int) -> APIRouter:
    """The monitoring routes; the admin ones only when ``admin_token`` is set (as with the
    inference service's own admin routes)."""
    router = APIRouter()

    async def receive_labels(request: Request, body: LabelBody) -> dict[str, Any]:
        labels = body.labels if isinstance(body, LabelBatch) else [body]
        if len(labels) > max_labels_per_request:
            raise ApiError(
                422, f"labels: {len(labels)} items; at most {max_labels_per_request} per request"
            )
        items = [LabelItem(label.id, label.label, label.row) for label in labels]
        outcomes = await _call(request, "add_labels", items)
        return {"received": len(items), **outcomes}

    @router.post("/labels", response_model=LabelReceipt, tags=["monitoring"])
    async def labels(request: Request, body: LabelBody) -> dict[str, Any]:
        """Delayed labels for earlier predictions, joined by request id."""
        return await receive_labels(request, body)

    @router.post("/v2/models/{name}/labels", response_model=LabelReceipt, tags=["monitoring"])
    async def model_labels(request: Request, name: str, body: LabelBody) -> dict[str, Any]:
        """Delayed labels for earlier predictions of model ``name``."""
        model = request.app.state.holder.current
        served = request.app.state.config.model_name or (model.name if model else None)
        if name != served:
            raise ApiError(404, f"unknown model {name!r}; this server serves {served!r}")
        return await receive_labels(request, body)

    @router.get("/monitoring/summary", tags=["monitoring"])
    async def summary(request: Request, ks: bool = True) -> dict[str, Any]:
        """Drift, online metrics, calibration, slices and the canary, per model version."""
        return await _call(request, "summary", ks)

    if admin_token is not None:
        _add_canary_admin_routes(router, admin_token)
    return router


def _add_canary_admin_routes(router: APIRouter, token: str) -> None:
    # Added to the same router rather than included from another: FastAPI's included
    # routers hold a lock, and the routers are pickled into every Serve replica.
    expected = token.encode()
    bearer = HTTPBearer(auto_error=False, description="The admin token ($TRIMTAB_ADMIN_TOKEN).")

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, expected):  # constant time
            raise ApiError(
                401, "a valid admin bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    admin = {"tags": ["admin"], "dependencies": [Depends(require_token)]}

    @router.post("/admin/canary", **admin)
    async def start_canary(request: Request, body: CanaryRequest) -> dict[str, Any]:
        """Send ``share`` of the traffic (default: the configured share) to ``version``."""
        registry = request.app.state.holder.registry
        if body.version not in await asyncio.to_thread(registry.versions):
            raise ApiError(404, f"no version {body.version} in the registry")
        return await _call(request, "start_canary", body.version, body.share)

    @router.delete("/admin/canary", **admin)
    async def stop_canary(request: Request) -> dict[str, Any]:
        """End the canary: all traffic back to the champion."""
        return await _call(request, "stop_canary")

    @router.post("/admin/canary/promote", **admin)
    async def promote_canary(request: Request) -> dict[str, Any]:
        """Make the canary the champion; this replica swaps now, the others within a poll."""
        state = await _call(request, "promote_canary")
        await request.app.state.holder.refresh()
        return state
