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
(``row`` picks a row of a request that carried several). Each label's fate is counted in the
answer, never refused: ``joined``; ``pending`` (its prediction has not reached the monitor
yet: held and joined when it arrives within the grace period); ``duplicate``, ``late``,
``unknown``, ``invalid``. The replica that takes the labels first ships its own queued
predictions, so a label posted right after its prediction normally joins at once.

Statuses: 200, 401 (admin without the token), 404 (unknown model or version), 409 (canary
refused, with the service's message), 413/415/422 (bad body), 503 (monitoring service
unreachable); every error carries ``{"error": "..."}``.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations.

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from serving.http_errors import ADMIN_ERRORS, ApiError, error_responses
from serving.http_schemas import REQUEST_ID_PATTERN, StrictInt
from serving.http_service import AdminOnly, Service
from serving.monitoring.canary import CanaryError
from serving.monitoring.records import LabelItem
from serving.monitoring.replica import ReplicaMonitor

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class Label(BaseModel):
    """The true class of one prediction row."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=REQUEST_ID_PATTERN, description="The prediction's request id.")
    label: StrictInt | Annotated[str, Field(strict=True)] = Field(
        description="Class index, or class name."
    )
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
    pending: int = Field(
        description="Its prediction has not reached the monitor yet: held for "
        "label_grace_s and joined when it arrives (GET /monitoring/summary counts those "
        "that never did as expired_pending)."
    )
    duplicate: int
    late: int
    unknown: int
    invalid: int = Field(description="A class the model does not have.")


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: StrictInt = Field(ge=1)
    share: Annotated[float, Field(strict=True, gt=0.0, lt=1.0)] | None = None


class CanaryStateResponse(BaseModel):
    status: str
    version: int | None
    share: float
    champion: int | None
    started_at: float | None
    ended_at: float | None
    reasons: list[str]
    last_decision: str | None
    labeled: int
    observed: int


async def replica_monitor(state: Service) -> ReplicaMonitor:
    observer = state.observer
    if not isinstance(observer, ReplicaMonitor):
        raise ApiError(503, "monitoring is not attached to this app")
    return observer


Replica = Annotated[ReplicaMonitor, Depends(replica_monitor)]


async def call_service(name: str, function: Callable[..., _T], *args: Any) -> _T:
    """Call the monitoring service in a thread: a refusal is 409 with its message, an
    unreachable service 503 (serving goes on)."""
    try:
        return await asyncio.to_thread(function, *args)
    except CanaryError as error:
        raise ApiError(409, str(error)) from None
    except Exception as error:  # the service is down or restarting
        logger.warning("monitoring service call %s failed: %r", name, error)
        raise ApiError(
            503, f"monitoring service unavailable ({type(error).__name__})", {"Retry-After": "1"}
        ) from None


_LABEL_ERRORS = error_responses(400, 404, 413, 415, 422, 431, 503)

router = APIRouter(tags=["monitoring"])


async def receive_labels(replica: ReplicaMonitor, body: Label | LabelBatch) -> dict[str, Any]:
    labels = body.labels if isinstance(body, LabelBatch) else [body]
    limit = replica.config.max_labels_per_request
    if len(labels) > limit:
        raise ApiError(422, f"labels: {len(labels)} items; at most {limit} per request")
    items = [LabelItem(label.id, label.label, label.row) for label in labels]
    # Ship this replica's queued predictions first: a label posted right after its
    # prediction was answered here then finds it.
    await asyncio.to_thread(replica.flush)
    outcomes = await call_service("add_labels", replica.client.add_labels, items)
    return {"received": len(items), **outcomes}


@router.post("/labels", response_model=LabelReceipt, responses=_LABEL_ERRORS)
async def labels(replica: Replica, body: LabelBody) -> dict[str, Any]:
    """Delayed labels for earlier predictions, joined by request id."""
    return await receive_labels(replica, body)


@router.post("/v2/models/{name}/labels", response_model=LabelReceipt, responses=_LABEL_ERRORS)
async def model_labels(state: Service, replica: Replica, name: str, body: LabelBody) -> dict:
    """Delayed labels for earlier predictions of model ``name``."""
    state.check_name(state.current_model(), name)
    return await receive_labels(replica, body)


@router.get("/monitoring/summary", responses=error_responses(400, 422, 431, 503))
async def summary(replica: Replica, ks: bool = True) -> dict[str, Any]:
    """Drift, online metrics, calibration, slices and the canary, per model version."""
    return await call_service("summary", replica.client.summary, ks)


admin_router = APIRouter(tags=["admin"], dependencies=AdminOnly)


@admin_router.post("/admin/canary", response_model=CanaryStateResponse, responses=ADMIN_ERRORS)
async def start_canary(state: Service, replica: Replica, body: CanaryRequest) -> dict[str, Any]:
    """Send ``share`` of the traffic (default: the configured share) to ``version``."""
    if body.version not in await asyncio.to_thread(state.holder.registry.versions):
        raise ApiError(404, f"no version {body.version} in the registry")
    return await call_service("start_canary", replica.client.start_canary, body.version, body.share)


@admin_router.delete("/admin/canary", response_model=CanaryStateResponse, responses=ADMIN_ERRORS)
async def stop_canary(replica: Replica) -> dict[str, Any]:
    """End the canary: all traffic back to the champion."""
    return await call_service("stop_canary", replica.client.stop_canary)


@admin_router.post(
    "/admin/canary/promote", response_model=CanaryStateResponse, responses=ADMIN_ERRORS
)
async def promote_canary(state: Service, replica: Replica) -> dict[str, Any]:
    """Make the canary the champion; this replica swaps now, the others within a poll."""
    canary = await call_service("promote_canary", replica.client.promote_canary)
    await state.holder.refresh()
    return canary
