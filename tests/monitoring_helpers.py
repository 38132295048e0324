"""Helpers the monitoring tests share (``test_serving_monitoring_service.py`` on the service,
``test_serving_monitoring_http.py`` on the app): a registry of tiny linear ONNX classifiers,
their rows and labels, scikit-learn's metrics as the reference, and a recording Prometheus fake.

A plain module, not a test module: import it as ``from tests.monitoring_helpers import ...``.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from serving.monitoring.metrics import expected_calibration_error
from serving.monitoring.prom import INSTRUMENTS
from serving.registry import Registry, build_reference_profile

FEATURES = 4
CLASSES = 3
FEATURE_NAMES = [f"f{index}" for index in range(FEATURES)]
CLASS_NAMES = ["a", "b", "c"]
GOOD_WEIGHTS = np.array(
    [[2.0, -1.0, 0.0], [-1.0, 2.0, 0.0], [0.0, 0.0, 1.5], [0.5, 0.5, -1.0]], dtype=np.float32
)


def write_linear_onnx(path: Path, weights: np.ndarray) -> Path:
    """A one-layer ONNX classifier: logits = input @ weights."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weights"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", weights.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", weights.shape[1]])],
        [numpy_helper.from_array(weights.astype(np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def sample_rows(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)


def true_labels(features: np.ndarray) -> np.ndarray:
    """The classes the good model predicts, with 10% flipped (so accuracy is below 1)."""
    labels = (features @ GOOD_WEIGHTS).argmax(axis=1)
    flip = np.random.default_rng(99).random(len(labels)) < 0.1
    return np.where(flip, (labels + 1) % CLASSES, labels)


def build_tiny_registry(root: Path) -> Registry:
    """Version 1 (good) is champion; version 2 (good, another seed of noise) and version 3
    (bad: weights negated) exist. Profiles come from 2000 reference rows."""
    registry = Registry(root)
    reference = sample_rows(2000, seed=0)
    labels = true_labels(reference)
    for version, weights in (
        (1, GOOD_WEIGHTS),
        (2, GOOD_WEIGHTS * 1.1),
        (3, -GOOD_WEIGHTS),
    ):
        path = write_linear_onnx(root.parent / f"{root.name}-v{version}.onnx", weights)
        predicted = (reference @ weights).argmax(axis=1)
        registry.register(
            path,
            model_name="tiny",
            lineage={"test": version},
            training_config={},
            offline_metrics={"accuracy": float(np.mean(predicted == labels))},
            quantization="none",
            gate_override="test fixture: a hand-built model that skips the gate",
            feature_names=FEATURE_NAMES,
            class_names=CLASS_NAMES,
            reference_profile=build_reference_profile(
                reference, predicted, FEATURE_NAMES, CLASS_NAMES, labels=labels
            ),
        )
    registry.set_alias("champion", 1)
    return registry


class RecordingRecorder:
    """A MetricsRecorder that keeps the last value (gauges), the total (counters) and every
    observation (histograms), and checks names and tag keys against the real instruments."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.observations: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        self._lock = threading.Lock()

    def _key(self, name: str, kind: str, tags: dict[str, str]):
        instrument = INSTRUMENTS[name]
        assert instrument.kind == kind, name
        assert set(tags) == set(instrument.tag_keys), (name, tags)
        return name, tuple(sorted(tags.items()))

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        assert value >= 0, "counters only go up"
        if value == 0:  # RayMetricsRecorder skips these too (Counter.inc(0) raises)
            return
        with self._lock:
            self.counters[self._key(name, "counter", tags)] += value

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        with self._lock:
            self.gauges[self._key(name, "gauge", tags)] = value

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        with self._lock:
            self.observations.setdefault(self._key(name, "histogram", tags), []).append(value)

    def counter(self, name: str, **tags: str) -> float:
        return self.counters[(name, tuple(sorted(tags.items())))]

    def gauge(self, name: str, **tags: str) -> float | None:
        return self.gauges.get((name, tuple(sorted(tags.items()))))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def sklearn_online(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="macro", zero_division=0
    )
    return {
        "accuracy": accuracy_score(labels, predicted),
        "macro_precision": precision,
        "macro_recall": recall,
        "macro_f1": f1,
        "ece": expected_calibration_error(probabilities, labels),
    }
