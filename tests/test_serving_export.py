"""ONNX export of a trained digits model: one checked file, dynamic batch, PyTorch parity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from serving.export import ONNX_OPSET, ExportError, check_exported_model, export_onnx
from tests.serving_models import accuracy_on_test_split, train_digits_mlp
from train_loops.data import PreparedDataset


@pytest.fixture(scope="module")
def model(digits: PreparedDataset) -> nn.Module:
    model = train_digits_mlp(digits)
    assert accuracy_on_test_split(model, digits) >= 0.95
    return model


@pytest.fixture(scope="module")
def exported(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, 64, tmp_path_factory.mktemp("export") / "model.onnx")


def test_export_writes_one_checked_self_contained_file(exported: Path) -> None:
    assert [p.name for p in exported.parent.iterdir()] == ["model.onnx"]
    onnx.checker.check_model(str(exported), full_check=True)
    proto = onnx.load(exported)
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [
        ("", ONNX_OPSET)
    ]
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    assert graph_input.name == "input"
    assert graph_output.name == "logits"
    batch, features = graph_input.type.tensor_type.shape.dim
    assert batch.dim_param and not batch.HasField("dim_value")
    assert features.dim_value == 64
    assert graph_output.type.tensor_type.shape.dim[1].dim_value == 10
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("batch_size", [1, 64])
@pytest.mark.parametrize("inputs", ["real", "random"])
def test_fp32_onnx_matches_pytorch(
    model: nn.Module, exported: Path, digits: PreparedDataset, batch_size: int, inputs: str
) -> None:
    test_features, _ = digits.load("test")
    if inputs == "real":
        rows = test_features[:batch_size]
    else:
        # Off the data but on its scale: training mean ± 3 standard deviations per feature.
        train_features, _ = digits.load("train")
        noise = np.random.default_rng(batch_size).standard_normal((batch_size, 64))
        rows = train_features.mean(0) + 3 * train_features.std(0) * noise
        rows = rows.astype(np.float32)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {"input": rows})
    with torch.no_grad():
        expected = model(torch.from_numpy(rows)).numpy()
    assert actual.shape == (batch_size, 10)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    assert (actual.argmax(1) == expected.argmax(1)).all()


def test_export_restores_training_mode_and_is_reproducible(
    model: nn.Module, exported: Path, tmp_path: Path
) -> None:
    model.train()
    try:
        again = export_onnx(model, 64, tmp_path / "again.onnx")
        assert model.training
    finally:
        model.eval()
    # Eval mode was used (no dropout here, but the mode is what matters) and no path or
    # timestamp leaks into the bytes: the same weights give the same file.
    assert hashlib.sha256(again.read_bytes()).digest() == (
        hashlib.sha256(exported.read_bytes()).digest()
    )


def test_check_refuses_a_model_without_a_dynamic_batch_axis(exported: Path, tmp_path: Path) -> None:
    proto = onnx.load(exported)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, fixed)
    with pytest.raises(ExportError, match=r"is not \(dynamic batch, 64\)"):
        check_exported_model(fixed, 64)
    with pytest.raises(ExportError, match=r"expected input \['features'\]"):
        check_exported_model(exported, 64, input_name="features")
