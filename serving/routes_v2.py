"""The read routes of Open Inference Protocol v2: server and model metadata, health."""

# No ``from __future__ import annotations``: FastAPI reads the route annotations.

from typing import Any

from fastapi import APIRouter

from serving.http_errors import READ_ERRORS, error_responses
from serving.http_schemas import (
    LiveResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ReadyResponse,
    ServerMetadataResponse,
)
from serving.http_service import Service, ServiceState
from serving.inference import LoadedModel

PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "trimtab"
API_VERSION = "1"

router = APIRouter(prefix="/v2", tags=["v2"])


def metadata(state: ServiceState, model: LoadedModel) -> dict[str, Any]:
    manifest = model.source.manifest
    return {
        "name": state.served_name(model),
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


@router.get("", response_model=ServerMetadataResponse, responses=error_responses(400, 431))
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": API_VERSION, "extensions": []}


@router.get("/health/live", response_model=LiveResponse, responses=error_responses(400, 431))
async def live() -> dict[str, Any]:
    return {"live": True}


@router.get("/health/ready", response_model=ReadyResponse, responses=error_responses(400, 431, 503))
async def ready(state: Service) -> dict[str, Any]:
    state.current_model()
    return {"ready": True}


@router.get("/models/{name}", response_model=ModelMetadataResponse, responses=READ_ERRORS)
async def model_metadata(state: Service, name: str) -> dict[str, Any]:
    return metadata(state, state.check_name(state.current_model(), name))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadataResponse,
    responses=READ_ERRORS,
)
async def model_version_metadata(state: Service, name: str, version: str) -> dict[str, Any]:
    model = state.check_name(state.current_model(), name)
    return metadata(state, state.check_version(model, name, version))


@router.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=READ_ERRORS)
async def model_ready(state: Service, name: str) -> dict[str, Any]:
    model = state.check_name(state.current_model(), name)
    return {"name": state.served_name(model), "ready": True}


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReadyResponse,
    responses=READ_ERRORS,
)
async def model_version_ready(state: Service, name: str, version: str) -> dict[str, Any]:
    model = state.check_name(state.current_model(), name)
    state.check_version(model, name, version)
    return {"name": state.served_name(model), "ready": True}
