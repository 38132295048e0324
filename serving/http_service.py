"""What every route of the inference service depends on, as FastAPI dependencies.

:class:`ServiceState` is built once per app (:func:`serving.http_api.create_http_app`) and
lives in ``app.state.service``; routes reach it through :data:`Service`. The request id
comes from :data:`RequestIdHeader`, the admin check from :func:`require_admin_token`: one
dependency each, shared by every router.

Every dependency is ``async def``: none of them blocks, and FastAPI runs a plain ``def``
dependency in a worker thread (a thread hop per dependency per request: about a tenth of a
replica's CPU per request before, measured with py-spy; docs/benchmarks/serving.md).
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations of dependencies.

import asyncio
import hmac
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.http_errors import ApiError
from serving.http_schemas import REQUEST_ID_PATTERN
from serving.inference import (
    AliasMove,
    LoadedModel,
    ModelChooser,
    ModelHolder,
    PredictionObserver,
    PredictionRecord,
)
from serving.serve_config import ServeConfig

logger = logging.getLogger(__name__)

RunModel = Callable[[LoadedModel, np.ndarray], Awaitable[np.ndarray]]
"""Runs a model on a float32 batch and returns its logits; the seam for dynamic batching."""


async def run_in_thread(model: LoadedModel, features: np.ndarray) -> np.ndarray:
    """The default :data:`RunModel`: one onnxruntime call per request, off the event loop."""
    return await asyncio.to_thread(model.run, features)


@dataclass(frozen=True)
class ServiceState:
    """The served model and everything the routes need around it."""

    holder: ModelHolder
    """The process's model, following the alias (admin routes move it)."""
    config: ServeConfig
    chooser: ModelChooser
    """Picks the model of each prediction request (the holder, or a canary split)."""
    observer: PredictionObserver
    run_model: RunModel
    echo_request_id: bool
    """Set ``x-request-id`` on prediction responses (Serve sets it itself)."""
    on_alias_move: Callable[[AliasMove], Awaitable[None]] | None = None
    """Told after an admin route moved the alias (a canary that became champion ends)."""

    @property
    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(math.ceil(self.config.retry_after_s))}

    def served_name(self, model: LoadedModel) -> str:
        return self.config.model_name or model.name

    def current_model(self) -> LoadedModel:
        """The holder's model, or 503 while none is loaded."""
        model = self.holder.current
        if model is None:
            raise ApiError(503, "no model loaded yet", self.retry_after)
        return model

    def check_name(self, model: LoadedModel, name: str) -> LoadedModel:
        """``model`` if ``name`` is what it is served as, else 404."""
        if name != self.served_name(model):
            raise ApiError(
                404, f"unknown model {name!r}; this server serves {self.served_name(model)!r}"
            )
        return model

    def check_version(self, model: LoadedModel, name: str, version: str) -> LoadedModel:
        """``model`` if it is ``version`` (canonical decimal), else 404."""
        if parse_version(version) != model.version:
            raise ApiError(
                404,
                f"version {version!r} of {name!r} is not loaded; serving version {model.version}",
            )
        return model

    async def alias_moved(self, move: AliasMove) -> None:
        if self.on_alias_move is None:
            return
        try:
            await self.on_alias_move(move)
        except Exception:  # the move happened; what listens to it must not undo the answer
            logger.exception("telling about alias move %s failed", move)

    def observe(self, record: PredictionRecord) -> None:
        """Tell the observer; its failures are logged, never the request's."""
        try:
            self.observer.observe(record)
        except Exception:
            logger.exception("prediction observer failed on request %s", record.request_id)


def parse_version(text: str) -> int | None:
    """The version a path segment names: ASCII digits in canonical form (``"2"``, not
    ``"02"``, ``"²"`` or ``"①"``), else ``None``."""
    if not (text.isascii() and text.isdecimal()) or len(text) > 9 or str(int(text)) != text:
        return None
    return int(text)


async def service(request: Request) -> ServiceState:
    return request.app.state.service


Service = Annotated[ServiceState, Depends(service)]


async def request_id_header(
    x_request_id: Annotated[
        str | None,
        Header(
            alias="x-request-id",
            pattern=REQUEST_ID_PATTERN,
            description="Your id for this prediction (echoed); a new one when absent.",
        ),
    ] = None,
) -> str | None:
    return x_request_id


RequestIdHeader = Annotated[str | None, Depends(request_id_header)]
"""The client's ``x-request-id`` (Serve fills in a new one when absent)."""


def new_request_id() -> str:
    return uuid.uuid4().hex


async def started_at() -> float:
    return time.perf_counter()


StartedAt = Annotated[float, Depends(started_at)]
"""``time.perf_counter()`` when the route's dependencies were solved (body parsed)."""


def answer_prediction(
    state: ServiceState,
    content: dict,
    record: PredictionRecord,
) -> JSONResponse:
    """Observe a successful prediction and answer it."""
    state.observe(record)
    headers = None
    if state.echo_request_id and record.request_id is not None:
        headers = {"x-request-id": record.request_id}
    return JSONResponse(content, headers=headers)


_bearer = HTTPBearer(auto_error=False, description="The admin token ($TRIMTAB_ADMIN_TOKEN).")


async def require_admin_token(
    state: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The one admin check: a bearer token equal to ``config.admin_token``, compared in
    constant time (the comparison must not reveal how much of a guess was right)."""
    expected = state.config.admin_token
    given = credentials.credentials.encode() if credentials is not None else b""
    if expected is None or not hmac.compare_digest(given, expected.get_secret_value().encode()):
        raise ApiError(
            401, "a valid admin bearer token is required", {"WWW-Authenticate": "Bearer"}
        )


AdminOnly = [Depends(require_admin_token)]
"""``dependencies=`` of every admin router."""
