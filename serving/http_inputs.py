"""Request bodies to model inputs: the checks that need the loaded model.

Feature counts, the row limit, the value range and the v2 tensor's shape are checked here,
each refusal a 422 whose message names the field (the JSON-only checks live in
:mod:`serving.http_schemas`).
"""

from __future__ import annotations

import numpy as np
from pydantic import TypeAdapter, ValidationError

from serving.http_errors import ApiError, describe_errors
from serving.http_schemas import FiniteNumber, InferInputTensor
from serving.inference import LoadedModel
from serving.serve_config import ServeConfig

_FLAT_VALUES = TypeAdapter(list[FiniteNumber])
_NESTED_VALUES = TypeAdapter(list[list[FiniteNumber]])


def _check_range(features: np.ndarray, field: str, max_abs: float) -> np.ndarray:
    out_of_range = ~(np.abs(features) <= max_abs)  # also catches NaN and float32 overflow
    if out_of_range.any():
        row, column = np.argwhere(out_of_range)[0]
        raise ApiError(422, f"{field}[{row}][{column}]: values must be within +-{max_abs:g}")
    return features


def rows_to_features(
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


def tensor_to_features(
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
        raise ApiError(422, describe_errors(error.errors(), prefix=f"{field}.data")) from None
    if nested:
        if len(values) != rows:
            raise ApiError(422, f"{field}.data: {len(values)} rows, but shape says {rows}")
        return rows_to_features(values, model, limits, f"{field}.data")
    if len(values) != rows * model.num_features:
        raise ApiError(
            422,
            f"{field}.data: {len(values)} values, but shape {tensor.shape} needs "
            f"{rows * model.num_features}",
        )
    with np.errstate(over="ignore"):
        features = np.asarray(values, dtype=np.float32).reshape(rows, model.num_features)
    return _check_range(features, f"{field}.data", limits.max_abs_feature_value)


def finite_logits(logits: np.ndarray, model: LoadedModel) -> np.ndarray:
    if not np.isfinite(logits).all():
        raise ApiError(
            500, f"version {model.version} produced non-finite outputs", version=model.version
        )
    return logits
