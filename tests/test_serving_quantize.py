"""Dynamic and static (QDQ, per-channel, calibrated) INT8 quantization with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

from serving.export import export_onnx
from serving.quantize import (
    RowCalibrationReader,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from tests.serving_models import accuracy_on_test_split, train_digits_mlp
from train_loops.data import PreparedDataset


@pytest.fixture(scope="module")
def fp32_path(digits: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = train_digits_mlp(digits)
    assert accuracy_on_test_split(model, digits) >= 0.95
    return export_onnx(model, 64, tmp_path_factory.mktemp("fp32") / "model.onnx")


def _accuracy(path: Path, digits: PreparedDataset) -> float:
    features, labels = digits.load("test")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": features})[0].argmax(1) == labels).mean())


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(path).graph.node}


def test_dynamic_int8_is_smaller_and_as_accurate(
    fp32_path: Path, digits: PreparedDataset, tmp_path: Path
) -> None:
    int8_path = quantize_dynamic_int8(fp32_path, tmp_path / "dynamic.onnx")

    assert [p.name for p in tmp_path.iterdir()] == ["dynamic.onnx"]
    onnx.checker.check_model(str(int8_path), full_check=True)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _op_types(int8_path)
    assert "Gemm" not in _op_types(int8_path)
    assert int8_path.stat().st_size < fp32_path.stat().st_size / 3
    drop = _accuracy(fp32_path, digits) - _accuracy(int8_path, digits)
    assert drop <= 0.01


def test_static_int8_is_qdq_per_channel_and_as_accurate(
    fp32_path: Path, digits: PreparedDataset, tmp_path: Path
) -> None:
    train_features, _ = digits.load("train")
    int8_path = quantize_static_int8(fp32_path, tmp_path / "static.onnx", train_features[:512])

    assert [p.name for p in tmp_path.iterdir()] == ["static.onnx"]
    onnx.checker.check_model(str(int8_path), full_check=True)
    proto = onnx.load(int8_path)
    assert {"QuantizeLinear", "DequantizeLinear", "Gemm"} <= _op_types(int8_path)
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    # Every Gemm reads its weight through a DequantizeLinear of an INT8 initializer with
    # one scale per output channel (per-channel), and its input through a uint8 QDQ pair.
    producers = {output: node for node in proto.graph.node for output in node.output}
    gemms = [node for node in proto.graph.node if node.op_type == "Gemm"]
    assert len(gemms) == 10
    for gemm in gemms:
        activation, weight = (producers[name] for name in gemm.input[:2])
        assert activation.op_type == weight.op_type == "DequantizeLinear"
        quantized_weight, scale = initializers[weight.input[0]], initializers[weight.input[1]]
        assert quantized_weight.dtype == np.int8
        assert scale.shape == (quantized_weight.shape[0],)
        assert producers[activation.input[0]].op_type == "QuantizeLinear"
        assert initializers[activation.input[2]].dtype == np.uint8
    assert int8_path.stat().st_size < fp32_path.stat().st_size / 3
    drop = _accuracy(fp32_path, digits) - _accuracy(int8_path, digits)
    assert drop <= 0.01


def test_calibration_reader_batches_rows_under_the_input_name() -> None:
    rows = np.arange(10 * 3, dtype=np.float64).reshape(10, 3)
    reader = RowCalibrationReader(rows, "input", batch_size=4)
    batches = [reader.get_next() for _ in range(4)]
    assert [b["input"].shape for b in batches[:3]] == [(4, 3), (4, 3), (2, 3)]
    assert batches[3] is None
    assert all(b["input"].dtype == np.float32 for b in batches[:3])
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches[:3]]), rows)
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], rows[:4])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        RowCalibrationReader(rows, "input", batch_size=0)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((8, 63), dtype=np.float32), r"shape \(rows, 64\), got \(8, 63\)"),
        (np.zeros((0, 64), dtype=np.float32), "calibration_rows is empty"),
        (np.full((8, 64), np.nan, dtype=np.float32), "NaN or infinite"),
    ],
)
def test_static_refuses_unusable_calibration_rows(
    fp32_path: Path, tmp_path: Path, rows: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        quantize_static_int8(fp32_path, tmp_path / "static.onnx", rows)
    assert not (tmp_path / "static.onnx").exists()
