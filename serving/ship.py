"""The Python API that takes a trained model to a registry version: export, quantize, gate,
measure, register, move an alias.

Example::

    model, prepared, training_config, lineage = load_model_for_export("runs/digits/final/...")
    version = ship(
        model, prepared, Registry("runs/registry"),
        model_name="digits",
        lineage={**lineage, "study": "digits"},
        training_config=training_config,  # e.g. {"clipping": {"method": "norm", ...}, ...}
    )
    version.manifest.quantization, version.manifest.gate

Which rows each step uses: the gate decides INT8 or FP32 on the validation split; the offline
metrics are measured on the test split, which nothing else has seen; the reference profile for
drift is built from the training and validation splits together (enough rows that sampling
noise does not read as drift).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime
import pyarrow.parquet as pq
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn

from serving.export import ONNX_OPSET, export_onnx
from serving.gate import GateConfig, run_gate
from serving.quantize import quantize_dynamic_int8, quantize_static_int8
from serving.reference_profile import reference_profile_from_splits
from serving.registry import (
    ALIAS_PATTERN,
    ModelVersion,
    Registry,
    RegistryError,
)
from train_loops.data import SPLITS, PreparedDataset

logger = logging.getLogger(__name__)

QUANTIZATION_MODES = ("static", "dynamic")


def ship(
    model: nn.Module,
    prepared_dataset: PreparedDataset,
    registry: Registry,
    *,
    model_name: str,
    lineage: dict[str, Any],
    training_config: dict[str, Any],
    quantization: Literal["static", "dynamic"] = "dynamic",
    gate: GateConfig = GateConfig(),  # noqa: B008 - frozen, so one shared default is safe
    alias: str | None = "candidate",
    calibration_rows: int = 512,
    seed: int = 0,
) -> ModelVersion:
    """Export ``model``, quantize it to INT8, gate it and register the winner.

    The gate (:func:`serving.gate.run_gate`, on the validation split) picks the INT8 model or
    falls back to the FP32 ONNX model; a model whose FP32 export does not match PyTorch raises
    :class:`serving.gate.ParityError` and nothing is registered. The offline metrics are
    measured with the registered file on the held-out test split; the reference profile with
    it on the training and validation splits
    (:data:`serving.reference_profile.REFERENCE_SPLITS`).

    Args:
        quantization: ``"static"`` (QDQ, per-channel, calibrated) or ``"dynamic"``.
        alias: moved to the new version (``None`` leaves every alias where it is).
        calibration_rows: training rows (a seeded random sample) that calibrate static INT8.
        seed: seed of that sample and of the reference profile's value samples.
    """
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(f"quantization must be one of {QUANTIZATION_MODES}, got {quantization!r}")
    if alias is not None and not ALIAS_PATTERN.fullmatch(alias):
        raise RegistryError(f"alias names must match [a-z][a-z0-9_-]*, got {alias!r}")
    if calibration_rows < 1:
        raise ValueError(f"calibration_rows must be >= 1, got {calibration_rows}")
    train_features, _ = prepared_dataset.load("train")
    test_features, test_labels = prepared_dataset.load("test")

    with tempfile.TemporaryDirectory(prefix="trimtab-ship-") as scratch:
        fp32_path = export_onnx(model, prepared_dataset.num_features, Path(scratch) / "fp32.onnx")
        int8_path = Path(scratch) / f"int8-{quantization}.onnx"
        if quantization == "static":
            sample = np.random.default_rng(seed).permutation(len(train_features))
            quantize_static_int8(
                fp32_path, int8_path, train_features[np.sort(sample[:calibration_rows])]
            )
        else:
            quantize_dynamic_int8(fp32_path, int8_path)
        result = run_gate(model, fp32_path, int8_path, prepared_dataset, gate)
        chosen_path = int8_path if result.chosen == "int8" else fp32_path

        session = onnxruntime.InferenceSession(str(chosen_path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        predictions = session.run(None, {input_name: test_features})[0].argmax(axis=1)
        class_names = list(prepared_dataset.class_names)
        feature_names = list(prepared_dataset.feature_names)
        version = registry.register(
            chosen_path,
            model_name=model_name,
            lineage=_with_provenance(lineage, prepared_dataset),
            training_config=training_config,
            offline_metrics=offline_metrics(predictions, test_labels, class_names),
            quantization=quantization if result.chosen == "int8" else "none",
            gate=dataclasses.replace(result, int8_mode=quantization),
            feature_names=feature_names,
            class_names=class_names,
            reference_profile=reference_profile_from_splits(
                prepared_dataset,
                lambda rows: session.run(None, {input_name: rows})[0].argmax(axis=1),
                seed=seed,
            ),
        )
    if alias is not None:
        registry.set_alias(alias, version.version)
    logger.info(
        "shipped %s version %d (%s)%s",
        model_name,
        version.version,
        version.manifest.quantization,
        f" as {alias}" if alias else "",
    )
    return version


def offline_metrics(
    predictions: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix
    (rows: true class, columns: predicted class) on the ``test`` split."""
    classes = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    return {
        "split": "test",
        "rows": len(labels),
        "accuracy": float(np.mean(predictions == labels)),
        "macro_f1": float(
            f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)
        ),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
    }


def _with_provenance(lineage: dict[str, Any], prepared: PreparedDataset) -> dict[str, Any]:
    data = {
        "root": str(prepared.root),
        "label_column": prepared.label_column,
        "split_rows": {
            split: pq.read_metadata(prepared.split_path(split)).num_rows for split in SPLITS
        },
        "split": "seeded stratified train/validation/test (train_loops.data)",
    }
    export = {
        "opset": ONNX_OPSET,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    return {"data": data, "export": export, **lineage}
