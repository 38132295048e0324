"""Helpers for the inference-service tests (``test_serving_http_api.py`` on the FastAPI app,
``test_serving_deployment.py`` on real Serve): the served model's limits and a two-version
registry of real trained digits models.

A plain module, not a test module: import it as ``from tests.serving_http_helpers import ...``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from serving.inference import softmax
from serving.registry import Registry, build_reference_profile
from train_loops.data import PreparedDataset
from train_loops.models import ModelSpec, build_model, fit_standardization

ADMIN_TOKEN = "test-admin-token-0123456789"
MAX_ROWS = 256
MAX_BODY_BYTES = 256 * 1024
NUM_FEATURES = 64
MODEL_NAME = "digits"


def _train_and_export(features: np.ndarray, labels: np.ndarray, seed: int, path: Path) -> None:
    torch.manual_seed(seed)
    model = build_model(ModelSpec("mlp", {"hidden": 64, "depth": 2}), features.shape[1], 10)
    fit_standardization(model, features)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(4):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 128):
            batch = order[start : start + 128]
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    # The TorchScript exporter is much faster than the dynamo one (serving.export) and is
    # enough for a test model; it warns that it is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            torch.zeros(1, features.shape[1]),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )


def build_two_version_registry(root: Path, digits: PreparedDataset) -> Path:
    """A registry with versions 1 and 2 (two seeds); champion → 1, candidate → 2."""
    features, labels = digits.load("train")
    registry = Registry(root)
    for seed in (0, 1):
        onnx_path = root.parent / f"{root.name}-seed{seed}.onnx"
        _train_and_export(features, labels, seed, onnx_path)
        predicted = softmax(load_model_session_logits(onnx_path, features)).argmax(axis=1)
        registry.register(
            onnx_path,
            model_name=MODEL_NAME,
            lineage={"seed": seed},
            training_config={"epochs": 4},
            offline_metrics={},
            quantization="none",
            gate_override="test fixture: a hand-built model that skips the gate",
            feature_names=list(digits.feature_names),
            class_names=list(digits.class_names),
            reference_profile=build_reference_profile(
                features, predicted, list(digits.feature_names), list(digits.class_names)
            ),
        )
    registry.set_alias("champion", 1)
    registry.set_alias("candidate", 2)
    return root


def load_model_session_logits(onnx_path: Path, features: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": features.astype(np.float32)})[0]


def corrupt(registry_root: Path, version: int) -> None:
    """Change a published model file so that it no longer matches its manifest."""
    with (Registry(registry_root).get(version).onnx_path).open("ab") as file:
        file.write(b"tampered")
