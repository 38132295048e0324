"""The prediction routes: ``POST /predict`` and Open Inference Protocol v2 ``.../infer``.

Each reads top to bottom: request id → model chooser (the canary swaps it) → input checks →
model (batched) → observer (told the served version and status) → response. Requests refused
before a model answers (bad JSON, unknown version, ...) reach the observer too, through
:class:`ObservedRoute`, with their status.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations.

import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from serving.http_errors import INFER_ERRORS, ApiError, answer_error
from serving.http_inputs import finite_logits, rows_to_features, tensor_to_features
from serving.http_schemas import InferRequest, InferResponse, PredictRequest, PredictResponse
from serving.http_service import (
    RequestIdHeader,
    Service,
    ServiceState,
    StartedAt,
    answer_prediction,
    new_request_id,
    parse_version,
)
from serving.inference import LoadedModel, PredictionRecord, softmax


class ObservedRoute(APIRoute):
    """A route whose refusals are reported to the app's observer (with their status and, when
    a model was already chosen, its version); successes report themselves."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def observed(request: Request) -> Response:
            started = time.perf_counter()
            try:
                return await handler(request)
            except Exception as error:
                response = await answer_error(request, error)
                state: ServiceState = request.app.state.service
                version = error.version if isinstance(error, ApiError) else None
                latency_s = time.perf_counter() - started
                state.observe(PredictionRecord(None, version, response.status_code, latency_s))
                return response

        return observed


router = APIRouter(route_class=ObservedRoute)


def choose(state: ServiceState, request_id: str, name: str, version: str | None) -> LoadedModel:
    """The model that answers: the chooser's pick, checked against the name and version the
    path gives (404 when they differ, 503 when nothing is loaded)."""
    pinned = parse_version(version) if version is not None else None
    model = state.chooser.choose(request_id, pinned)
    if model is None:
        raise ApiError(503, "no model loaded yet", state.retry_after)
    state.check_name(model, name)
    if version is not None:
        state.check_version(model, name, version)
    return model


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=INFER_ERRORS,
    summary="Predict labels and probabilities for rows of features",
    tags=["predict"],
)
async def predict(
    state: Service, body: PredictRequest, header_id: RequestIdHeader, started: StartedAt
) -> JSONResponse:
    request_id = header_id or new_request_id()
    model = state.chooser.choose(request_id, None)
    if model is None:
        raise ApiError(503, "no model loaded yet", state.retry_after)
    try:
        features = rows_to_features(body.instances, model, state.config, "instances")
        logits = finite_logits(await state.run_model(model, features), model)
    except ApiError as error:
        error.version = model.version
        raise
    probabilities = softmax(logits.astype(np.float64))
    class_names = model.class_names
    content = {
        "model_name": state.served_name(model),
        "model_version": model.version,
        "request_id": request_id,
        "labels": [class_names[index] for index in probabilities.argmax(axis=1)],
        "probabilities": probabilities.tolist(),
    }
    record = PredictionRecord(
        request_id, model.version, 200, time.perf_counter() - started, features, probabilities
    )
    return answer_prediction(state, content, record)


async def infer(
    state: ServiceState,
    name: str,
    version: str | None,
    body: InferRequest,
    header_id: str | None,
    started: float,
) -> JSONResponse:
    # The body's id first: it is the id labels will name, and the canary split keys on it.
    request_id = body.id or header_id or new_request_id()
    model = choose(state, request_id, name, version)
    try:
        features, logits = await _infer_logits(state, model, body)
    except ApiError as error:
        error.version = model.version
        raise
    content = {
        "model_name": state.served_name(model),
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
    probabilities = softmax(logits.astype(np.float64))
    record = PredictionRecord(
        request_id, model.version, 200, time.perf_counter() - started, features, probabilities
    )
    return answer_prediction(state, content, record)


async def _infer_logits(
    state: ServiceState, model: LoadedModel, body: InferRequest
) -> tuple[np.ndarray, np.ndarray]:
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
    features = tensor_to_features(body.inputs[0], model, state.config, "inputs[0]")
    return features, finite_logits(await state.run_model(model, features), model)


@router.post(
    "/v2/models/{name}/infer",
    response_model=InferResponse,
    responses=INFER_ERRORS,
    tags=["v2"],
)
async def model_infer(
    state: Service, name: str, body: InferRequest, header_id: RequestIdHeader, started: StartedAt
) -> JSONResponse:
    return await infer(state, name, None, body, header_id, started)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    responses=INFER_ERRORS,
    tags=["v2"],
)
async def model_version_infer(
    state: Service,
    name: str,
    version: str,
    body: InferRequest,
    header_id: RequestIdHeader,
    started: StartedAt,
) -> JSONResponse:
    return await infer(state, name, version, body, header_id, started)
