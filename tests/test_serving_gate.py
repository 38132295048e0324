"""The gate: FP32 parity with PyTorch, INT8 accuracy drop, INT8 latency, and the choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from torch import nn

from serving.export import export_onnx
from serving.gate import GateConfig, GateResult, ParityError, run_gate
from serving.quantize import quantize_static_int8
from tests.serving_models import accuracy_on_test_split, train_digits_mlp
from train_loops.data import PreparedDataset
from train_loops.models import ModelSpec, build_model

FAST = {"repeats": 30}


@pytest.fixture(scope="module")
def model(digits: PreparedDataset) -> nn.Module:
    model = train_digits_mlp(digits)
    assert accuracy_on_test_split(model, digits) >= 0.95
    return model


@pytest.fixture(scope="module")
def artifacts(
    model: nn.Module, digits: PreparedDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("artifacts")
    fp32_path = export_onnx(model, 64, directory / "fp32.onnx")
    train_features, _ = digits.load("train")
    int8_path = quantize_static_int8(fp32_path, directory / "int8.onnx", train_features[:512])
    return fp32_path, int8_path


@pytest.fixture(scope="module")
def untrained_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of the same shape that predicts (nearly) at random."""
    other = build_model(ModelSpec("mlp"), 64, 10)
    return export_onnx(other, 64, tmp_path_factory.mktemp("untrained") / "model.onnx")


def test_static_int8_passes_the_accuracy_gate_on_digits(
    model: nn.Module, artifacts: tuple[Path, Path], digits: PreparedDataset
) -> None:
    fp32_path, int8_path = artifacts
    result = run_gate(model, fp32_path, int8_path, digits, GateConfig(**FAST))

    assert [(c.inputs, c.batch_size) for c in result.parity] == [
        ("real", 1),
        ("real", 64),
        ("random", 1),
        ("random", 64),
    ]
    for check in result.parity:
        assert check.passed
        assert check.max_abs_diff <= 1e-4 * max(1.0, check.max_abs_logit)
    assert result.fp32_accuracy >= 0.95
    # Every decision is taken on the validation split; the test split stays for reporting.
    assert result.split == "validation" and result.rows == 269
    validation_features, validation_labels = digits.load("validation")
    fp32_predictions = (
        onnxruntime.InferenceSession(str(fp32_path)).run(None, {"input": validation_features})[0]
    ).argmax(1)
    assert result.fp32_accuracy == np.mean(fp32_predictions == validation_labels)
    assert result.passed
    assert result.accuracy_drop <= 0.01
    assert result.accuracy_passed
    assert result.int8_agreement >= 0.98
    assert [entry.batch_size for entry in result.latency] == [1, 64]
    for entry in result.latency:
        assert entry.fp32_p50_ms > 0 and entry.int8_p50_ms > 0
        assert entry.speedup == pytest.approx(entry.fp32_p50_ms / entry.int8_p50_ms)
    # Which artifact wins on speed depends on this machine; the choice must follow the numbers.
    assert result.latency_passed == all(entry.speedup > 1.0 for entry in result.latency)
    assert result.chosen == ("int8" if result.latency_passed else "fp32")
    assert result.reason.startswith(
        "INT8 registered" if result.latency_passed else "FP32 registered: INT8 is not faster"
    )
    record = result.to_dict()
    assert json.loads(json.dumps(record)) == record  # JSON types only: what a manifest stores
    assert record["parity"][0] == {
        "inputs": "real",
        "batch_size": 1,
        "rows": 269,
        "max_abs_diff": result.parity[0].max_abs_diff,
        "max_abs_logit": result.parity[0].max_abs_logit,
        "allowed": result.parity[0].allowed,
        "passed": True,
    }
    assert record["passed"] is True and record["split"] == "validation"


def test_an_int8_model_that_is_not_faster_enough_falls_back_to_fp32(
    model: nn.Module, artifacts: tuple[Path, Path], digits: PreparedDataset
) -> None:
    fp32_path, int8_path = artifacts
    config = GateConfig(min_speedup=1000.0, batch_sizes=(1,), **FAST)
    result = run_gate(model, fp32_path, int8_path, digits, config)

    assert result.accuracy_passed
    assert not result.latency_passed
    assert result.chosen == "fp32"
    assert "FP32 registered: INT8 is not faster at batch 1" in result.reason
    assert "needs > 1000x" in result.reason


def test_an_inaccurate_int8_model_falls_back_to_fp32(
    model: nn.Module,
    artifacts: tuple[Path, Path],
    untrained_export: Path,
    digits: PreparedDataset,
) -> None:
    fp32_path, _ = artifacts
    # The untrained model stands in for an INT8 conversion that destroyed the model.
    result = run_gate(model, fp32_path, untrained_export, digits, GateConfig(min_speedup=0, **FAST))

    assert not result.accuracy_passed
    assert result.latency_passed
    assert result.chosen == "fp32"
    assert result.accuracy_drop > 0.5
    assert result.reason.startswith("FP32 registered: INT8 loses")
    assert "more than the limit of 1.00" in result.reason


def test_an_fp32_export_that_disagrees_with_pytorch_is_refused(
    model: nn.Module, untrained_export: Path, digits: PreparedDataset
) -> None:
    with pytest.raises(
        ParityError, match=r"does not match the PyTorch model \(real inputs at batch 1"
    ):
        run_gate(model, untrained_export, untrained_export, digits, GateConfig(**FAST))


def test_gate_result_is_a_frozen_record() -> None:
    assert GateResult.__dataclass_params__.frozen


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tolerance", 0.0, "tolerance must be > 0"),
        ("max_accuracy_drop", -0.01, r"max_accuracy_drop must be in \[0, 1\]"),
        ("batch_sizes", (), "batch_sizes must be positive"),
        ("batch_sizes", (1, 0), "batch_sizes must be positive"),
        ("repeats", 0, "repeats must be >= 1"),
        ("min_speedup", -1.0, "min_speedup must be >= 0"),
        ("random_rows", 0, "random_rows must be >= 1"),
        ("intra_op_threads", -1, "intra_op_threads must be >= 0"),
    ],
)
def test_gate_config_names_the_bad_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateConfig(**{field: value})
