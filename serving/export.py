"""Export a trained model to one self-contained ONNX file with a dynamic batch axis.

Example::

    path = export_onnx(model, num_features=64, path=Path("model.onnx"))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": rows})[0]
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

logger = logging.getLogger(__name__)

# Opset 18 is the opset torch's dynamo exporter (onnxscript's torchlib) emits natively, so no
# version-conversion pass rewrites the graph after translation; it is >= 17, where
# LayerNormalization is one ONNX op rather than a decomposed ReduceMean/Sub/Pow chain (faster and
# closer to PyTorch numerically); and onnxruntime 1.31's kernels and quantization tools support it.
ONNX_OPSET = 18


class ExportError(RuntimeError):
    """The exported file failed a check (shape of the graph, external data, onnx.checker)."""


def export_onnx(
    model: nn.Module,
    num_features: int,
    path: Path | str,
    *,
    opset: int = ONNX_OPSET,
    input_name: str = "input",
    output_name: str = "logits",
) -> Path:
    """Export ``model`` (raw float32 rows ``(batch, num_features)`` → logits) to ``path``.

    The model is traced in eval mode (its previous mode is restored afterwards) with torch's
    dynamo-based exporter, the batch axis stays dynamic, weights are embedded in the one file
    (no external data) and the result passes ``onnx.checker.check_model(full_check=True)``.
    Returns ``path``.
    """
    path = Path(path)
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    # Batch 2, not 1: torch.export specialises dimensions of size 0 and 1 to constants.
    example = torch.zeros(2, num_features, dtype=torch.float32)
    was_training = model.training
    model.eval()
    registration_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    registration_logger.addFilter(_drop_missing_torchvision)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own exporter trips its own pytree deprecation; nothing a caller can fix.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                verbose=False,
            )
    finally:
        registration_logger.removeFilter(_drop_missing_torchvision)
        model.train(was_training)
    proto = program.model_proto
    # Node metadata carries stack traces with this machine's absolute paths; without it the
    # same weights export to the same bytes (and the same sha256) anywhere.
    for node in proto.graph.node:
        del node.metadata_props[:]
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    try:
        onnx.save_model(proto, temporary, save_as_external_data=False)
        check_exported_model(Path(temporary), num_features, input_name, output_name)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("exported %s (opset %d, %d bytes)", path, opset, path.stat().st_size)
    return path


def _drop_missing_torchvision(record: logging.LogRecord) -> bool:
    # The exporter warns about every torchvision op it cannot register; our models use none.
    return not record.getMessage().startswith("torchvision is not installed")


def check_exported_model(
    path: Path, num_features: int, input_name: str = "input", output_name: str = "logits"
) -> None:
    """Raise :class:`ExportError` unless ``path`` is a valid single-file ONNX model with one
    float input ``(batch, num_features)`` named ``input_name`` and one output ``output_name``."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{path}: onnx.checker rejected the model: {error}") from error
    model = onnx.load(path, load_external_data=False)
    external = [
        tensor.name
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise ExportError(f"{path}: weights stored outside the file: {external[:3]}")
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    if inputs != [input_name] or outputs != [output_name]:
        raise ExportError(
            f"{path}: expected input [{input_name!r}] and output [{output_name!r}], "
            f"got {inputs} and {outputs}"
        )
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 2 or dims[0].HasField("dim_value") or dims[1].dim_value != num_features:
        shape = [d.dim_param or d.dim_value for d in dims]
        raise ExportError(f"{path}: input shape {shape} is not (dynamic batch, {num_features})")
