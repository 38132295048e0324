"""``ship()`` end to end (real torch, onnxruntime and registry) and ``trimtab export``'s
argument errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from search.cli import main
from serving.gate import GateConfig, ParityError
from serving.registry import Registry, RegistryError
from serving.ship import ship
from tests.serving_models import accuracy_on_test_split, train_digits_mlp
from train_loops.data import PreparedDataset

LINEAGE = {"study": "digits-clip", "trial": "trial_0007", "checkpoint": "runs/x/checkpoint_3"}
TRAINING_CONFIG = {
    "model": {"name": "mlp"},
    "clip": {"kind": "norm", "max_norm": 1.0},
    "precision": "bf16",
    "lr": 1e-3,
}


@pytest.fixture(scope="module")
def model(digits: PreparedDataset) -> nn.Module:
    model = train_digits_mlp(digits)
    assert accuracy_on_test_split(model, digits) >= 0.95
    return model


def test_ship_registers_static_int8_with_metrics_profile_card_and_alias(
    model: nn.Module, digits: PreparedDataset, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    # min_speedup=0: the INT8 path regardless of how loaded this machine is right now.
    version = ship(
        model,
        digits,
        registry,
        model_name="digits",
        lineage=LINEAGE,
        training_config=TRAINING_CONFIG,
        quantization="static",
        gate=GateConfig(min_speedup=0.0, repeats=20),
    )

    assert registry.versions() == [1]
    assert registry.aliases() == {"candidate": 1}
    manifest = version.manifest
    assert manifest.model_name == "digits"
    assert manifest.quantization == "static"
    assert manifest.gate["chosen"] == "int8"
    assert manifest.gate["int8_mode"] == "static"
    assert manifest.gate["accuracy_drop"] <= 0.01
    # The gate decided on the validation split; the test split is left for the offline metrics.
    assert manifest.gate["passed"] is True
    assert manifest.gate["split"] == "validation" and manifest.gate["rows"] == 269
    assert manifest.gate["parity"][0]["rows"] == 269
    assert not manifest.gate_overridden
    assert manifest.lineage["study"] == "digits-clip"
    assert manifest.lineage["trial"] == "trial_0007"
    assert manifest.lineage["data"]["split_rows"] == {"train": 1259, "validation": 269, "test": 269}
    assert manifest.lineage["export"]["opset"] == 18
    assert manifest.training_config == TRAINING_CONFIG
    assert manifest.input_schema.feature_names == list(digits.feature_names)
    assert manifest.output_schema.class_names == list(digits.class_names)

    metrics = manifest.offline_metrics
    assert metrics["split"] == "test" and metrics["rows"] == 269
    assert metrics["accuracy"] >= 0.95
    assert set(metrics["per_class"]) == set(digits.class_names)
    assert sum(c["support"] for c in metrics["per_class"].values()) == 269
    assert np.trace(np.array(metrics["confusion_matrix"])) == round(metrics["accuracy"] * 269)

    # The registered file is the INT8 model, and what it predicts is what was measured.
    session = registry.get("candidate").load_session()
    features, labels = digits.load("test")
    predictions = session.run(None, {"input": features})[0].argmax(1)
    assert np.mean(predictions == labels) == metrics["accuracy"]
    ops = {node.op_type for node in onnx.load(version.onnx_path).graph.node}
    assert "QuantizeLinear" in ops

    # The drift reference comes from the training and validation rows (1,528), not the test rows.
    profile = version.reference_profile()
    assert profile["rows"] == 1259 + 269
    assert profile["source"] == "train+validation"
    assert list(profile["features"]) == list(digits.feature_names)
    reference = [digits.load(split) for split in ("train", "validation")]
    reference_features = np.concatenate([features for features, _ in reference])
    reference_labels = np.concatenate([labels for _, labels in reference])
    reference_predictions = session.run(None, {"input": reference_features})[0].argmax(1)
    assert (
        profile["predictions"]["counts"]
        == np.bincount(reference_predictions, minlength=10).tolist()
    )
    assert profile["labels"]["counts"] == np.bincount(reference_labels, minlength=10).tolist()

    card = (version.directory / "MODEL_CARD.md").read_text()
    assert "# Model card: digits, version 1" in card
    assert "| `clip.max_norm` | 1.0 |" in card
    assert "| `precision` | bf16 |" in card
    assert "INT8 registered" in card
    assert "The gate decided on the `validation` split (269 rows)" in card
    assert "Per class:" in card
    assert "- FP32 ONNX vs PyTorch, random inputs at batch 64: max |Δlogit|" in card
    assert "| batch | FP32 p50 ms | INT8 p50 ms | speed-up |" in card


def test_ship_falls_back_to_fp32_and_keeps_earlier_versions(
    model: nn.Module, digits: PreparedDataset, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    common = dict(model_name="digits", lineage=LINEAGE, training_config=TRAINING_CONFIG)
    first = ship(
        model,
        digits,
        registry,
        quantization="dynamic",
        alias="champion",
        gate=GateConfig(min_speedup=0.0, repeats=20),
        **common,
    )
    second = ship(
        model,
        digits,
        registry,
        quantization="dynamic",
        gate=GateConfig(min_speedup=1000.0, repeats=20),
        **common,
    )

    assert first.manifest.quantization == "dynamic"
    assert second.manifest.quantization == "none"
    assert second.manifest.gate["chosen"] == "fp32"
    assert second.manifest.gate["reason"].startswith("FP32 registered: INT8 is not faster")
    assert "quantization `none`" in (second.directory / "MODEL_CARD.md").read_text()
    assert registry.aliases() == {"candidate": 2, "champion": 1}
    assert registry.versions() == [1, 2]
    assert second.onnx_path.stat().st_size > 3 * first.onnx_path.stat().st_size
    first.verify()
    second.verify()


class _NoisyModel(nn.Module):
    """Adds fresh noise on every call: its ONNX export cannot reproduce PyTorch's outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x)
        return logits + torch.rand_like(logits)


def test_a_model_failing_parity_is_not_registered(digits: PreparedDataset, tmp_path: Path):
    registry = Registry(tmp_path / "registry")
    with pytest.raises(ParityError, match="does not match the PyTorch model"):
        ship(
            _NoisyModel(),
            digits,
            registry,
            model_name="digits",
            lineage=LINEAGE,
            training_config=TRAINING_CONFIG,
            quantization="dynamic",
        )
    assert registry.versions() == []
    assert registry.aliases() == {}


def test_ship_refuses_bad_arguments_before_any_work(
    model: nn.Module, digits: PreparedDataset, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    common = dict(model_name="digits", lineage=LINEAGE, training_config=TRAINING_CONFIG)
    with pytest.raises(ValueError, match="quantization must be one of"):
        ship(model, digits, registry, quantization="int4", **common)
    with pytest.raises(RegistryError, match="alias names must match"):
        ship(model, digits, registry, alias="Champion!", **common)
    assert registry.versions() == []


def _checkpoint(directory: Path, *files: str) -> Path:
    directory.mkdir()
    for name in files:
        (directory / name).write_text("{}")
    return directory


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--registry", "{tmp}/registry"], "give exactly one of --checkpoint DIR and --study DIR"),
        (
            ["--study", "{tmp}", "--registry", "{tmp}/registry"],
            "{tmp} is not a finished study (no report/summary.json)",
        ),
        (["--checkpoint", "{tmp}/complete"], "--registry DIR is required"),
        (
            ["--checkpoint", "{tmp}/missing", "--registry", "{tmp}/registry"],
            "checkpoint directory {tmp}/missing does not exist",
        ),
        (
            ["--checkpoint", "{tmp}/partial", "--registry", "{tmp}/registry"],
            "{tmp}/partial is not a checkpoint: train_config.json is missing",
        ),
        (
            ["--checkpoint", "{tmp}/complete", "--registry", "{tmp}/complete/state.pt"],
            "registry {tmp}/complete/state.pt exists and is not a directory",
        ),
        (
            ["--checkpoint", "{tmp}/complete", "--registry", "{tmp}/r", "--quantization", "int4"],
            "--quantization must be one of static, dynamic, got 'int4'",
        ),
        (
            ["--checkpoint", "{tmp}/complete", "--registry", "{tmp}/r", "--alias", "Prod"],
            "--alias must match [a-z][a-z0-9_-]*, got 'Prod'",
        ),
    ],
)
def test_export_command_reports_argument_errors_in_one_line(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    _checkpoint(tmp_path / "complete", "state.pt", "train_config.json")
    _checkpoint(tmp_path / "partial", "state.pt")
    arguments = [a.format(tmp=tmp_path) for a in arguments]

    result = CliRunner().invoke(main, ["export", *arguments])

    assert result.exit_code == 2
    assert result.stderr == f"trimtab: error: {message.format(tmp=tmp_path)}\n"
    assert result.stdout == ""
    assert not (tmp_path / "registry").exists()


def test_export_command_registers_a_trained_checkpoint(tmp_path: Path, digits) -> None:
    """The whole CLI path: a real in-process training run's checkpoint → registry version."""
    import shutil

    from train_loops.config import TrainConfig
    from train_loops.worker import train_in_process

    kept = tmp_path / "checkpoint"

    def keep(metrics, directory):
        if directory is not None:
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(directory, kept)

    train_in_process(TrainConfig(dataset_dir=str(digits.root), epochs=2), keep)
    arguments = ["--checkpoint", str(kept), "--registry", str(tmp_path / "registry")]
    result = CliRunner().invoke(main, ["export", *arguments, "--alias", "champion"])
    assert result.exit_code == 0, result.output
    registry = Registry(tmp_path / "registry")
    assert registry.aliases() == {"champion": 1}
    version = registry.get("champion")
    version.verify()
    assert version.manifest.lineage["checkpoint"] == str(kept)
    assert version.manifest.offline_metrics["accuracy"] > 0.9
