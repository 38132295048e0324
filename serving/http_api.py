"""The FastAPI app of the inference service, independent of Ray Serve.

:func:`create_http_app` builds the app around a :class:`~serving.inference.ModelHolder`.
Ray Serve mounts it in every replica (:mod:`serving.app`), the benchmark serves it with plain
uvicorn, and the tests drive it with FastAPI's ``TestClient``: the same routes and checks
everywhere. Serve-only behaviour comes in through arguments: ``run_model`` (dynamic batching)
and ``echo_request_id`` (Serve's proxy already echoes ``x-request-id``).

Routes (``{name}`` is the served model's name; every route also has a
``/v2/models/{name}/versions/{version}/...`` form for the served version):

========================================  ====================================================
``POST /predict``                         ``{"instances": [[...], ...]}`` → labels,
                                          probabilities, model version, request id
``POST /v2/models/{name}/infer``          Open Inference Protocol v2 inference
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
``max_body_bytes`` (decided from ``Content-Length`` before reading, or while reading a
chunked body), 415 body not ``application/json``, 422 JSON that is not a valid request
(the message names the field), 500 a bug, 503 no model loaded yet (with ``Retry-After``).
Every one carries ``{"error": "..."}``. Serve's proxy adds one more: 503 with
``Retry-After`` and a plain-text body when ``max_queued_requests`` is exceeded.

Routes added through ``routers`` can reach ``request.app.state.holder`` (the
:class:`ModelHolder`), ``.config`` and ``.observer``.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations, some of
# which name values local to create_http_app.

import asyncio
import copy
import hmac
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.http_schemas import (
    REQUEST_ID_PATTERN,
    AliasMoveRequest,
    AliasMoveResponse,
    ErrorBody,
    FiniteNumber,
    InferInputTensor,
    InferRequest,
    InferResponse,
    LiveResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    ServerMetadataResponse,
)
from serving.inference import (
    LoadedModel,
    ModelHolder,
    NoOpObserver,
    PredictionObserver,
    softmax,
)
from serving.registry import RegistryError, RegistryIntegrityError
from serving.serve_config import ServeConfig

logger = logging.getLogger(__name__)

RunModel = Callable[[LoadedModel, np.ndarray], Awaitable[np.ndarray]]
"""Runs a model on a float32 batch and returns its logits; the seam for dynamic batching."""

PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "trimtab"
REQUEST_ID_SCOPE_KEY = "trimtab.request_id"
"""The ASGI scope key of the request's id: the ``x-request-id`` header, a new id when absent,
replaced by the body's ``id`` on v2 infer routes (the id the labels join on)."""
_STARTED_KEY = "trimtab.started"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
_FLAT_VALUES = TypeAdapter(list[FiniteNumber])
_NESTED_VALUES = TypeAdapter(list[list[FiniteNumber]])


async def run_in_thread(model: LoadedModel, features: np.ndarray) -> np.ndarray:
    """The default :data:`RunModel`: one onnxruntime call per request, off the event loop."""
    return await asyncio.to_thread(model.run, features)


class ApiError(Exception):
    """Answer ``status_code`` with ``{"error": message}``."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


def _error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


# --------------------------------------------------------------------------- middleware


class RequestIdMiddleware:
    """Give every request an id (the client's ``x-request-id`` or a new one) and a start time.

    With ``echo`` the id is also set on the response; Serve's proxy does that itself.
    """

    def __init__(self, app: ASGIApp, *, echo: bool) -> None:
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[_STARTED_KEY] = time.perf_counter()
        given = Headers(scope=scope).get("x-request-id")
        if given is not None and not _REQUEST_ID.fullmatch(given):
            response = _error_response(
                400, "x-request-id must be 1 to 128 printable ASCII characters without spaces"
            )
            await response(scope, receive, send)
            return
        request_id = given or uuid.uuid4().hex
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        if not self.echo:
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_body_bytes`` with 413 without reading them.

    A ``Content-Length`` over the limit is refused before a byte of the body is read; a
    chunked body is counted as it arrives and refused at the first chunk past the limit.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _error_response(400, "Content-Length must be a number")(scope, receive, send)
                return
            if int(declared) > self.max_body_bytes:
                message = f"request body is {declared} bytes; the limit is {self.max_body_bytes}"
                await _error_response(413, message)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI passes HTTPException through body parsing; the app's handler
                    # turns it into the JSON 413.
                    raise HTTPException(
                        413, f"request body exceeds the limit of {self.max_body_bytes} bytes"
                    )
            return message

        await self.app(scope, limited_receive, send)


# --------------------------------------------------------------------------- errors

_STATUS_DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON, or x-request-id is invalid.",
    401: "Missing or wrong bearer token.",
    404: "Unknown model or version.",
    409: "The alias cannot move there (version fails its hash, nothing to move to).",
    413: "Request body larger than max_body_bytes.",
    415: "Request body is not application/json.",
    422: "Valid JSON that is not a valid request; the message names the field.",
    500: "Internal error.",
    503: "No model loaded yet, or (from Serve's proxy) the request queue is full; retry after "
    "Retry-After seconds.",
}


def _error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {}
    for status_code in status_codes:
        entry: dict[str, Any] = {
            "model": ErrorBody,
            "description": _STATUS_DESCRIPTIONS[status_code],
        }
        if status_code == 503:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                }
            }
        if status_code == 401:
            entry["headers"] = {
                "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
            }
        responses[status_code] = entry
    return responses


# 422 cannot happen on the read routes (their parameters are plain strings), but FastAPI
# documents its own 422 body for any route with parameters unless told otherwise.
_READ_ERRORS = _error_responses(400, 404, 422, 500, 503)
_INFER_ERRORS = _error_responses(400, 404, 413, 415, 422, 500, 503)
_ADMIN_ERRORS = _error_responses(400, 401, 404, 409, 413, 415, 422, 500)


def _describe_location(location: Sequence[str | int]) -> str:
    parts = list(location)
    prefix = ""
    if parts and parts[0] == "body":
        parts = parts[1:]
    elif parts and parts[0] in ("path", "query", "header"):
        prefix = f"{parts[0]} parameter "
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return prefix + (text or "body")


def _describe_errors(errors: Sequence[dict[str, Any]], prefix: str = "", limit: int = 3) -> str:
    described = []
    for error in errors[:limit]:
        where = _describe_location(error.get("loc", ()))
        if prefix:
            where = prefix + ("" if where.startswith("[") else ".") + where
        described.append(f"{where}: {error.get('msg', 'invalid')}")
    if len(errors) > limit:
        described.append(f"and {len(errors) - limit} more")
    return "; ".join(described)


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    errors = error.errors()
    if any(item.get("type") == "json_invalid" for item in errors):
        detail = next(item for item in errors if item.get("type") == "json_invalid")
        reason = detail.get("ctx", {}).get("error", "invalid JSON")
        position = detail.get("loc", ("body", "?"))[-1]
        return _error_response(400, f"request body is not valid JSON: {reason} (at {position})")
    if isinstance(error.body, bytes | bytearray) and not _is_json(
        request.headers.get("content-type")
    ):
        given = request.headers.get("content-type") or "none"
        return _error_response(415, f"Content-Type must be application/json, got {given}")
    body_errors = [item for item in errors if tuple(item.get("loc", ())) == ("body",)]
    if body_errors:
        if body_errors[0].get("type") == "missing":
            return _error_response(422, "a JSON request body is required")
        return _error_response(
            422, f"the request body must be a JSON object, got {error.body!r:.60}"
        )
    return _error_response(422, _describe_errors(errors))


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return _error_response(error.status_code, error.message, error.headers)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return _error_response(error.status_code, str(error.detail), error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unexpected error answering %s %s", request.method, request.url.path)
    return _error_response(500, f"internal error ({type(error).__name__})")


# --------------------------------------------------------------------------- input checks


def _check_range(features: np.ndarray, field: str, max_abs: float) -> np.ndarray:
    out_of_range = ~(np.abs(features) <= max_abs)  # also catches NaN and float32 overflow
    if out_of_range.any():
        row, column = np.argwhere(out_of_range)[0]
        raise ApiError(422, f"{field}[{row}][{column}]: values must be within +-{max_abs:g}")
    return features


def _rows_to_features(
    rows: list[list[float]], model: LoadedModel, limits: ServeConfig, field: str
) -> np.ndarray:
    max_rows = limits.max_instances_per_request
    if len(rows) > max_rows:
        raise ApiError(422, f"{field}: {len(rows)} rows; at most {max_rows} per request")
    for index, row in enumerate(rows):
        if len(row) != model.num_features:
            raise ApiError(
                422,
                f"{field}[{index}]: {len(row)} features; model {model.name!r} expects "
                f"{model.num_features}",
            )
    with np.errstate(over="ignore"):
        features = np.asarray(rows, dtype=np.float32)
    features = features.reshape(len(rows), model.num_features)
    return _check_range(features, field, limits.max_abs_feature_value)


def _tensor_to_features(
    tensor: InferInputTensor, model: LoadedModel, limits: ServeConfig, field: str
) -> np.ndarray:
    max_rows = limits.max_instances_per_request
    expected = f"[rows, {model.num_features}]"
    if len(tensor.shape) != 2 or tensor.shape[1] != model.num_features:
        raise ApiError(422, f"{field}.shape must be {expected}, got {tensor.shape}")
    rows = tensor.shape[0]
    if rows < 1:
        raise ApiError(422, f"{field}.shape: at least one row is needed, got {tensor.shape}")
    if rows > max_rows:
        raise ApiError(422, f"{field}.shape: {rows} rows; at most {max_rows} per request")
    nested = bool(tensor.data) and isinstance(tensor.data[0], list)
    try:
        values = (_NESTED_VALUES if nested else _FLAT_VALUES).validate_python(tensor.data)
    except ValidationError as error:
        raise ApiError(422, _describe_errors(error.errors(), prefix=f"{field}.data")) from None
    if nested:
        if len(values) != rows:
            raise ApiError(422, f"{field}.data: {len(values)} rows, but shape says {rows}")
        return _rows_to_features(values, model, limits, f"{field}.data")
    if len(values) != rows * model.num_features:
        raise ApiError(
            422,
            f"{field}.data: {len(values)} values, but shape {tensor.shape} needs "
            f"{rows * model.num_features}",
        )
    with np.errstate(over="ignore"):
        features = np.asarray(values, dtype=np.float32).reshape(rows, model.num_features)
    return _check_range(features, f"{field}.data", limits.max_abs_feature_value)


def _finite_logits(logits: np.ndarray, model: LoadedModel) -> np.ndarray:
    if not np.isfinite(logits).all():
        raise ApiError(500, f"version {model.version} produced non-finite outputs")
    return logits


# --------------------------------------------------------------------------- the app


def create_http_app(
    holder: ModelHolder,
    config: ServeConfig,
    *,
    run_model: RunModel = run_in_thread,
    observer: PredictionObserver | None = None,
    routers: Sequence[APIRouter] = (),
    echo_request_id: bool = True,
) -> FastAPI:
    """The inference service's FastAPI app around ``holder``.

    Args:
        holder: the served model (may still be empty: prediction routes answer 503).
        config: limits, names and the admin token.
        run_model: how a validated batch reaches the model (Serve passes its batcher).
        observer: sees every prediction after its response is sent.
        routers: more routes to mount (monitoring, ...).
        echo_request_id: set ``x-request-id`` on responses (off behind Serve's proxy).
    """
    observer = observer if observer is not None else NoOpObserver()
    app = FastAPI(
        title="trimtab inference",
        summary="Open Inference Protocol v2 and a simple /predict over a registry alias.",
        version="1",
    )
    app.state.holder = holder
    app.state.config = config
    app.state.observer = observer
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=config.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, echo=echo_request_id)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    retry_after = {"Retry-After": str(math.ceil(config.retry_after_s))}

    def served_name(model: LoadedModel) -> str:
        return config.model_name or model.name

    def current_model() -> LoadedModel:
        model = holder.current
        if model is None:
            raise ApiError(503, "no model loaded yet", retry_after)
        return model

    def named_model(name: str, version: str | None = None) -> LoadedModel:
        model = current_model()
        if name != served_name(model):
            raise ApiError(
                404, f"unknown model {name!r}; this server serves {served_name(model)!r}"
            )
        if version is not None and version != str(model.version):
            raise ApiError(
                404,
                f"version {version!r} of {name!r} is not loaded; serving version {model.version}",
            )
        return model

    def observe_later(
        request_id: str,
        model: LoadedModel,
        features: np.ndarray,
        probabilities: np.ndarray,
        started: float,
    ) -> BackgroundTask | None:
        if isinstance(observer, NoOpObserver):
            return None
        latency_s = time.perf_counter() - started

        async def observe() -> None:
            # A coroutine, so Starlette runs it on the event loop after the response is
            # sent; a plain function would cost a worker-thread hop per request. The
            # observer only queues, so it must not block (see PredictionObserver).
            try:
                observer.observe(request_id, model.version, features, probabilities, latency_s)
            except Exception:
                logger.exception("prediction observer failed on request %s", request_id)

        return BackgroundTask(observe)

    request_id_header = Annotated[
        str | None,
        Header(
            alias="x-request-id",
            pattern=REQUEST_ID_PATTERN,
            description="Your id for this prediction (echoed); a new one when absent.",
        ),
    ]

    # ------------------------------------------------------------------ simple predict

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=_INFER_ERRORS,
        summary="Predict labels and probabilities for rows of features",
        tags=["predict"],
    )
    async def predict(
        request: Request, body: PredictRequest, x_request_id: request_id_header = None
    ) -> JSONResponse:
        model = current_model()
        features = _rows_to_features(body.instances, model, config, "instances")
        logits = _finite_logits(await run_model(model, features), model)
        probabilities = softmax(logits.astype(np.float64))
        request_id = request.scope[REQUEST_ID_SCOPE_KEY]
        class_names = model.class_names
        content = {
            "model_name": served_name(model),
            "model_version": model.version,
            "request_id": request_id,
            "labels": [class_names[index] for index in probabilities.argmax(axis=1)],
            "probabilities": probabilities.tolist(),
        }
        background = observe_later(
            request_id, model, features, probabilities, request.scope[_STARTED_KEY]
        )
        return JSONResponse(content, background=background)

    # ------------------------------------------------------------------ v2 protocol

    def use_body_id(request: Request, body: InferRequest) -> None:
        # Before the model is chosen: a canary split keyed on the request id sees this one.
        if body.id is not None:
            request.scope[REQUEST_ID_SCOPE_KEY] = body.id

    async def infer(request: Request, model: LoadedModel, body: InferRequest) -> JSONResponse:
        if len(body.inputs) != 1 or body.inputs[0].name != model.input_name:
            given = [tensor.name for tensor in body.inputs]
            raise ApiError(
                422, f"inputs: the model takes one tensor named {model.input_name!r}, got {given}"
            )
        for index, requested in enumerate(body.outputs or []):
            if requested.name != model.output_name:
                raise ApiError(
                    422,
                    f"outputs[{index}].name: unknown output {requested.name!r}; the model's "
                    f"output is {model.output_name!r}",
                )
        features = _tensor_to_features(body.inputs[0], model, config, "inputs[0]")
        logits = _finite_logits(await run_model(model, features), model)
        request_id = request.scope[REQUEST_ID_SCOPE_KEY]
        content = {
            "model_name": served_name(model),
            "model_version": str(model.version),
            "id": request_id,
            "outputs": [
                {
                    "name": model.output_name,
                    "datatype": "FP32",
                    "shape": list(logits.shape),
                    "data": logits.ravel().tolist(),
                }
            ],
        }
        background = None
        if not isinstance(observer, NoOpObserver):
            probabilities = softmax(logits.astype(np.float64))
            background = observe_later(
                request_id, model, features, probabilities, request.scope[_STARTED_KEY]
            )
        return JSONResponse(content, background=background)

    def metadata(model: LoadedModel) -> dict[str, Any]:
        manifest = model.source.manifest
        return {
            "name": served_name(model),
            "versions": [str(model.version)],
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": manifest.input_schema.name,
                    "datatype": manifest.input_schema.datatype,
                    "shape": list(manifest.input_schema.shape),
                }
            ],
            "outputs": [
                {
                    "name": manifest.output_schema.name,
                    "datatype": manifest.output_schema.datatype,
                    "shape": list(manifest.output_schema.shape),
                }
            ],
        }

    v2 = APIRouter(prefix="/v2", tags=["v2"])

    @v2.get("", response_model=ServerMetadataResponse, responses=_error_responses(400))
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": app.version, "extensions": []}

    @v2.get("/health/live", response_model=LiveResponse, responses=_error_responses(400))
    async def live() -> dict[str, Any]:
        return {"live": True}

    @v2.get("/health/ready", response_model=ReadyResponse, responses=_error_responses(400, 503))
    async def ready() -> dict[str, Any]:
        current_model()
        return {"ready": True}

    @v2.get("/models/{name}", response_model=ModelMetadataResponse, responses=_READ_ERRORS)
    async def model_metadata(name: str) -> dict[str, Any]:
        return metadata(named_model(name))

    @v2.get(
        "/models/{name}/versions/{version}",
        response_model=ModelMetadataResponse,
        responses=_READ_ERRORS,
    )
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        return metadata(named_model(name, version))

    @v2.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=_READ_ERRORS)
    async def model_ready(name: str) -> dict[str, Any]:
        return {"name": served_name(named_model(name)), "ready": True}

    @v2.get(
        "/models/{name}/versions/{version}/ready",
        response_model=ModelReadyResponse,
        responses=_READ_ERRORS,
    )
    async def model_version_ready(name: str, version: str) -> dict[str, Any]:
        return {"name": served_name(named_model(name, version)), "ready": True}

    @v2.post("/models/{name}/infer", response_model=InferResponse, responses=_INFER_ERRORS)
    async def model_infer(
        request: Request, name: str, body: InferRequest, x_request_id: request_id_header = None
    ) -> JSONResponse:
        use_body_id(request, body)
        return await infer(request, named_model(name), body)

    @v2.post(
        "/models/{name}/versions/{version}/infer",
        response_model=InferResponse,
        responses=_INFER_ERRORS,
    )
    async def model_version_infer(
        request: Request,
        name: str,
        version: str,
        body: InferRequest,
        x_request_id: request_id_header = None,
    ) -> JSONResponse:
        use_body_id(request, body)
        return await infer(request, named_model(name, version), body)

    app.include_router(v2)
    if config.admin_token is not None:
        app.include_router(_admin_router(holder, config.admin_token.get_secret_value()))
    else:
        logger.warning("no admin token (set $TRIMTAB_ADMIN_TOKEN): admin routes are off")
    for router in routers:
        app.include_router(router)
    _add_model_limits_to_openapi(app, holder, config)
    return app


def _admin_router(holder: ModelHolder, token: str) -> APIRouter:
    expected = token.encode()
    bearer = HTTPBearer(auto_error=False, description="The admin token ($TRIMTAB_ADMIN_TOKEN).")

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        # Constant time: the comparison must not reveal how much of a guess was right.
        if not hmac.compare_digest(given, expected):
            raise ApiError(
                401, "a valid admin bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_token)])

    async def move(action: str, body: AliasMoveRequest | None) -> dict[str, Any]:
        version = body.version if body is not None else None
        if version is not None and version not in holder.registry.versions():
            raise ApiError(404, f"no version {version} in the registry")
        try:
            if action == "promote":
                moved = await holder.promote(version)
            else:
                moved = await holder.rollback(version)
        except RegistryIntegrityError as error:
            raise ApiError(409, f"{action} refused: {error}") from None
        except RegistryError as error:
            raise ApiError(409, f"{action} refused: {error}") from None
        served = holder.current
        logger.warning(
            "admin %s: alias %s %s -> %s",
            action,
            moved.alias,
            moved.previous_version,
            moved.version,
        )
        return {
            "alias": moved.alias,
            "version": moved.version,
            "previous_version": moved.previous_version,
            "served_version": served.version if served is not None else moved.version,
        }

    @router.post("/promote", response_model=AliasMoveResponse, responses=_ADMIN_ERRORS)
    async def promote(body: AliasMoveRequest | None = None) -> dict[str, Any]:
        """Point the served alias at ``version`` (default: the candidate alias's)."""
        return await move("promote", body)

    @router.post("/rollback", response_model=AliasMoveResponse, responses=_ADMIN_ERRORS)
    async def rollback(body: AliasMoveRequest | None = None) -> dict[str, Any]:
        """Point the served alias back at ``version`` (default: the one before the last move)."""
        return await move("rollback", body)

    return router


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
