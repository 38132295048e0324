"""The input and output schemas of a registered model, read from its ONNX graph."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx
import pydantic


class InputSchema(pydantic.BaseModel, extra="forbid", frozen=True):
    """The model's single input: rows of raw float32 features, in ``feature_names`` order."""

    name: str = "input"
    datatype: Literal["FP32"] = "FP32"
    feature_names: list[str]
    shape: list[int]

    @pydantic.model_validator(mode="after")
    def _shape_matches_features(self) -> InputSchema:
        if self.shape != [-1, len(self.feature_names)]:
            raise ValueError(
                f"input shape must be [-1, {len(self.feature_names)}], got {self.shape}"
            )
        return self


class OutputSchema(pydantic.BaseModel, extra="forbid", frozen=True):
    """The model's single output: one logit per class, in ``class_names`` order."""

    name: str = "logits"
    datatype: Literal["FP32"] = "FP32"
    class_names: list[str]
    shape: list[int]

    @pydantic.model_validator(mode="after")
    def _shape_matches_classes(self) -> OutputSchema:
        if self.shape != [-1, len(self.class_names)]:
            raise ValueError(
                f"output shape must be [-1, {len(self.class_names)}], got {self.shape}"
            )
        return self


def schemas_from_onnx(
    model_bytes: bytes, path: Path | str, feature_names: list[str], class_names: list[str]
) -> tuple[InputSchema, OutputSchema]:
    """The input and output schemas of an ONNX file, checked against the names it must serve:
    one float32 input ``[batch, features]`` and one float32 output ``[batch, classes]``.
    Raises ``ValueError`` otherwise."""
    try:
        graph = onnx.load_from_string(model_bytes).graph
    except Exception as error:  # onnx raises protobuf's DecodeError and others
        raise ValueError(f"{path}: not an ONNX model: {error}") from error
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(
            f"{path}: expected one input and one output, got {len(graph.input)} and "
            f"{len(graph.output)}"
        )
    schemas = []
    for value, names, what in (
        (graph.input[0], feature_names, "features"),
        (graph.output[0], class_names, "classes"),
    ):
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise ValueError(f"{path}: {value.name!r} is not float32")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if len(dims) != 2 or dims[0] != -1 or dims[1] != len(names):
            raise ValueError(
                f"{path}: {value.name!r} has shape {dims}; expected a dynamic batch axis and "
                f"{len(names)} {what}"
            )
        schemas.append((value.name, [-1, len(names)]))
    (input_name, input_shape), (output_name, output_shape) = schemas
    return (
        InputSchema(name=input_name, feature_names=feature_names, shape=input_shape),
        OutputSchema(name=output_name, class_names=class_names, shape=output_shape),
    )
