"""Request and response bodies of the inference service, as pydantic models.

Two dialects: the simple ``/predict`` (``{"instances": [[...], ...]}``) and the Open Inference
Protocol v2 REST API (KServe / Triton), whose field names and meanings these models follow:
https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/

Checks that need the loaded model (feature count, batch limit, tensor names) live in
:mod:`serving.http_inputs`; these models check what JSON alone can say.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

REQUEST_ID_PATTERN = r"^[!-~]{1,128}$"
"""Printable ASCII without spaces, 1 to 128 characters (``x-request-id`` and v2 ``id``)."""

FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A JSON number (integer or float); never a string, boolean, null, NaN or infinity. The app
also bounds its magnitude (``max_abs_feature_value``, published in ``/openapi.json``)."""

StrictInt = Annotated[int, Field(strict=True)]


class ErrorBody(BaseModel):
    """Every 4xx and 5xx the app answers carries this body."""

    error: str = Field(description="What is wrong, naming the field when there is one.")


class PredictRequest(BaseModel):
    """Rows of raw features, in the order of the model's ``feature_names``."""

    model_config = ConfigDict(extra="forbid")

    instances: list[list[FiniteNumber]] = Field(
        min_length=1,
        description="One row per prediction; each row has exactly the model's feature count.",
    )


class PredictResponse(BaseModel):
    model_name: str
    model_version: int = Field(description="The registry version that computed these rows.")
    request_id: str = Field(
        description="The client's x-request-id, or a new one: the key delayed labels join on."
    )
    labels: list[str] = Field(description="The most probable class name of each row.")
    probabilities: list[list[float]] = Field(
        description="Softmax of the logits, one row per instance, in class_names order."
    )


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks the variable batch axis.")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


_TENSOR_DATA_SCHEMA = {
    "type": "array",
    "items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]},
    "description": "Row-major values: flat, or nested one list per row.",
}


class InferInputTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[StrictInt]
    datatype: Literal["FP32"]
    parameters: dict[str, Any] | None = None
    # Checked against ``shape`` by the app: JSON Schema cannot say len(data) == prod(shape).
    data: Annotated[list[Any], WithJsonSchema(_TENSOR_DATA_SCHEMA)]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float] = Field(description="Row-major, flat.")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutputTensor]


class AliasMoveRequest(BaseModel):
    """The version to move the alias to; omitted: the candidate (promote) or the previous
    version (roll back)."""

    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(strict=True, ge=1)] | None = None


class AliasMoveResponse(BaseModel):
    alias: str
    version: int
    previous_version: int | None
    served_version: int = Field(
        description="What the replica that answered now serves; the others follow within "
        "alias_poll_interval_s."
    )
