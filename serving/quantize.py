"""INT8 quantization of an exported FP32 model with onnxruntime's quantization tools.

Both modes first run ORT's recommended pre-processing (``quant_pre_process``: symbolic shape
inference and graph optimisation), which is also what makes the dynamo exporter's output
quantizable: ``quantize_dynamic`` trips over the exporter's value_info otherwise.

- :func:`quantize_dynamic_int8`: INT8 weights; activations are quantized on the fly per batch.
  Needs no data.
- :func:`quantize_static_int8`: QDQ format, per-channel signed INT8 weights and unsigned INT8
  activations whose ranges are calibrated (min/max) on rows from the training split.

Only the compute-heavy ops (``MatMul``, ``Gemm``, ``Conv``, plus ``Relu`` so that a
``Gemm → Relu`` pair shares one quantized output) are quantized; normalisation and residual
additions stay FP32, where rounding hurts most and saves least. Unsigned activations with
signed weights (U8S8) are what onnxruntime's x86 CPU kernels fuse best: with them every
``DequantizeLinear → Gemm → QuantizeLinear`` becomes one ``QGemm`` (with S8 activations the
first ``Gemm`` of the digits MLP stayed unfused and FP32). On x86 CPUs without VNNI, U8S8 can
saturate; the gate's accuracy check is what catches that.

Example::

    quantize_static_int8(Path("model.onnx"), Path("model.int8.onnx"), train_rows[:512])
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

logger = logging.getLogger(__name__)

DYNAMIC_OP_TYPES = ["MatMul", "Gemm", "Conv"]
STATIC_OP_TYPES = ["MatMul", "Gemm", "Conv", "Relu"]


class RowCalibrationReader(CalibrationDataReader):
    """Feeds calibration rows to the quantizer in batches under the model's input name."""

    def __init__(self, rows: np.ndarray, input_name: str, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.rows):
            return None
        batch = self.rows[self._start : self._start + self.batch_size]
        self._start += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._start = 0


def quantize_dynamic_int8(src: Path | str, dst: Path | str) -> Path:
    """Write a dynamically quantized INT8 copy of the FP32 model ``src`` to ``dst``."""
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="trimtab-quantize-") as scratch:
        prepared = _preprocess(src, Path(scratch))
        quantize_dynamic(
            prepared,
            dst,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=DYNAMIC_OP_TYPES,
        )
    _check(dst)
    logger.info("dynamic INT8: %s -> %s (%d bytes)", src, dst, dst.stat().st_size)
    return dst


def quantize_static_int8(
    src: Path | str, dst: Path | str, calibration_rows: np.ndarray, *, batch_size: int = 64
) -> Path:
    """Write a statically quantized INT8 copy (QDQ, per-channel weights) of ``src`` to ``dst``,
    with activation ranges calibrated on ``calibration_rows`` (raw training-split features),
    fed through :class:`RowCalibrationReader` in batches of ``batch_size``."""
    src, dst = Path(src), Path(dst)
    input_name, num_features = _single_input(src)
    if calibration_rows.ndim != 2 or calibration_rows.shape[1] != num_features:
        raise ValueError(
            f"calibration_rows must have shape (rows, {num_features}), got {calibration_rows.shape}"
        )
    if len(calibration_rows) == 0:
        raise ValueError("calibration_rows is empty; static quantization needs data")
    if not np.isfinite(calibration_rows).all():
        raise ValueError("calibration_rows contains NaN or infinite values")
    with tempfile.TemporaryDirectory(prefix="trimtab-quantize-") as scratch:
        prepared = _preprocess(src, Path(scratch))
        quantize_static(
            prepared,
            dst,
            RowCalibrationReader(calibration_rows, input_name, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=STATIC_OP_TYPES,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
        )
    _check(dst)
    logger.info(
        "static INT8 (QDQ, per-channel, %d calibration rows): %s -> %s (%d bytes)",
        len(calibration_rows),
        src,
        dst,
        dst.stat().st_size,
    )
    return dst


def _preprocess(src: Path, scratch: Path) -> Path:
    prepared = scratch / "preprocessed.onnx"
    quant_pre_process(str(src), str(prepared))
    return prepared


def _single_input(path: Path) -> tuple[str, int]:
    graph = onnx.load(path, load_external_data=False).graph
    if len(graph.input) != 1:
        raise ValueError(f"{path}: expected one input, got {[i.name for i in graph.input]}")
    dims = graph.input[0].type.tensor_type.shape.dim
    return graph.input[0].name, dims[-1].dim_value


def _check(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)
