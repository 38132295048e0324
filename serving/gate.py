"""The gate between an exported model and the registry.

Three checks, in order:

1. **Parity.** The FP32 ONNX model must reproduce PyTorch's logits on real rows (the validation
   split) and on random rows, at every configured batch size. A failure raises
   :class:`ParityError`: the export is wrong and nothing may be registered.
2. **Accuracy.** The INT8 model may lose at most ``max_accuracy_drop`` validation accuracy
   against the FP32 ONNX model.
3. **Latency.** The INT8 model must be faster than the FP32 ONNX model (median latency, by more
   than ``min_speedup``) at every configured batch size.

If INT8 passes 2 and 3 it is chosen; otherwise the FP32 ONNX model is, and
:attr:`GateResult.reason` says why. Every decision is taken on the validation split; the test
split is left alone, for the offline metrics a registered version reports. The registry
refuses a version without a passed :class:`GateResult` (or an explicit
:class:`~serving.gate_result.GateOverride`).

Example::

    result = run_gate(model, Path("model.onnx"), Path("model.int8.onnx"), prepared, GateConfig())
    result.chosen, result.reason
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime
import torch
from torch import nn

from serving.gate_result import GateOverride, GateResult, LatencyComparison, ParityCheck
from train_loops.data import PreparedDataset

__all__ = [
    "GateConfig",
    "GateError",
    "GateOverride",
    "GateResult",
    "LatencyComparison",
    "ParityCheck",
    "ParityError",
    "run_gate",
]

logger = logging.getLogger(__name__)

GATE_SPLIT = "validation"
"""The split every gate decision is taken on."""

_BLOCK = 20
_WARM_CALLS = 3


class GateError(RuntimeError):
    """The gate refused the export outright; nothing may be registered."""


class ParityError(GateError):
    """The FP32 ONNX model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class GateConfig:
    """How strict the gate is."""

    tolerance: float = 1e-4
    """Largest allowed ``|ONNX − PyTorch|`` logit difference, relative to the larger of 1 and the
    largest ``|PyTorch logit|`` in the batch (so it is absolute for logits of order 1)."""
    max_accuracy_drop: float = 0.01
    """Largest allowed validation-accuracy loss of INT8 against FP32 ONNX, as a fraction
    (0.01 = 1 point)."""
    batch_sizes: tuple[int, ...] = (1, 64)
    """Batch sizes at which parity and latency are checked."""
    repeats: int = 200
    """Timed runs per model and batch size; the medians are compared. The models take turns in
    blocks of 20 calls, each block after 3 untimed warm-up calls."""
    min_speedup: float = 1.0
    """INT8 must beat ``FP32 p50 / INT8 p50 > min_speedup`` at every batch size; 0 disables."""
    random_rows: int = 256
    """Random rows for the parity check: training mean ± 3 training standard deviations."""
    intra_op_threads: int = 1
    """onnxruntime threads while timing (1: one core, as a one-CPU Serve replica has; 0: ORT's
    default of all cores)."""
    seed: int = 0
    """Seed of the random parity rows."""

    def __post_init__(self) -> None:
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {self.tolerance}")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ValueError(f"max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop}")
        if not self.batch_sizes or any(size < 1 for size in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not self.min_speedup >= 0:
            raise ValueError(f"min_speedup must be >= 0, got {self.min_speedup}")
        if self.random_rows < 1:
            raise ValueError(f"random_rows must be >= 1, got {self.random_rows}")
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")


def run_gate(
    model: nn.Module,
    fp32_path: Path,
    int8_path: Path,
    prepared_dataset: PreparedDataset,
    config: GateConfig = GateConfig(),
) -> GateResult:
    """Check parity, INT8 accuracy and INT8 latency; choose the artifact to register.

    Raises :class:`ParityError` if the FP32 ONNX model does not match ``model``.
    """
    train_features, _ = prepared_dataset.load("train")
    # The decision is taken on validation rows; test rows stay unseen for the offline metrics.
    features, labels = prepared_dataset.load(GATE_SPLIT)
    fp32 = _session(fp32_path, config.intra_op_threads)
    int8 = _session(int8_path, config.intra_op_threads)

    random_features = _random_rows(train_features, config.random_rows, config.seed)
    parity = tuple(
        _parity(model, fp32, rows, kind, batch_size, config.tolerance)
        for kind, rows in (("real", features), ("random", random_features))
        for batch_size in config.batch_sizes
    )
    failed = [check for check in parity if not check.passed]
    if failed:
        described = "; ".join(
            f"{check.inputs} inputs at batch {check.batch_size}: max |Δlogit| "
            f"{check.max_abs_diff:.3g} > allowed {check.allowed:.3g}"
            for check in failed
        )
        raise ParityError(f"{fp32_path} does not match the PyTorch model ({described})")

    fp32_predictions = _predict(fp32, features)
    int8_predictions = _predict(int8, features)
    fp32_accuracy = float(np.mean(fp32_predictions == labels))
    int8_accuracy = float(np.mean(int8_predictions == labels))
    accuracy_drop = fp32_accuracy - int8_accuracy
    # A small epsilon so that a drop of exactly the limit (e.g. 0.01 as a float) passes.
    accuracy_passed = accuracy_drop <= config.max_accuracy_drop + 1e-12

    latency = tuple(
        _compare_latency(fp32, int8, features, batch_size, config.repeats)
        for batch_size in config.batch_sizes
    )
    slower = [entry for entry in latency if not entry.speedup > config.min_speedup]
    latency_passed = not slower

    if not accuracy_passed:
        chosen = "fp32"
        reason = (
            f"FP32 registered: INT8 loses {accuracy_drop * 100:.2f} {GATE_SPLIT} accuracy points "
            f"({fp32_accuracy:.4f} -> {int8_accuracy:.4f}), more than the limit of "
            f"{config.max_accuracy_drop * 100:.2f}"
        )
    elif not latency_passed:
        chosen = "fp32"
        reason = "FP32 registered: INT8 is not faster " + ", ".join(
            f"at batch {entry.batch_size} ({entry.int8_p50_ms:.4f} ms vs "
            f"{entry.fp32_p50_ms:.4f} ms FP32, speed-up {entry.speedup:.2f}x, "
            f"needs > {config.min_speedup:g}x)"
            for entry in slower
        )
    else:
        chosen = "int8"
        speedups = ", ".join(
            f"{entry.speedup:.2f}x at batch {entry.batch_size}" for entry in latency
        )
        reason = (
            f"INT8 registered: {GATE_SPLIT} accuracy drop {accuracy_drop * 100:.2f} points (limit "
            f"{config.max_accuracy_drop * 100:.2f}), speed-up {speedups} "
            f"(needs > {config.min_speedup:g}x)"
        )
    logger.info("gate: %s", reason)
    return GateResult(
        parity=parity,
        split=GATE_SPLIT,
        rows=len(labels),
        fp32_accuracy=fp32_accuracy,
        int8_accuracy=int8_accuracy,
        accuracy_drop=accuracy_drop,
        max_accuracy_drop=config.max_accuracy_drop,
        int8_agreement=float(np.mean(fp32_predictions == int8_predictions)),
        accuracy_passed=accuracy_passed,
        latency=latency,
        min_speedup=config.min_speedup,
        latency_passed=latency_passed,
        chosen=chosen,
        reason=reason,
    )


def _session(path: Path, intra_op_threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _random_rows(train_features: np.ndarray, rows: int, seed: int) -> np.ndarray:
    # Wider than the data (±3 σ) but on its scale: a constant feature stays constant, because
    # the model divides it by a near-zero standard deviation.
    mean, std = train_features.mean(axis=0), train_features.std(axis=0)
    noise = np.random.default_rng(seed).standard_normal((rows, train_features.shape[1]))
    return (mean + 3 * std * noise).astype(np.float32)


def _parity(
    model: nn.Module,
    session: onnxruntime.InferenceSession,
    rows: np.ndarray,
    kind: Literal["real", "random"],
    batch_size: int,
    tolerance: float,
) -> ParityCheck:
    # PyTorch's reference logits in one call: its result does not depend on how rows are
    # batched beyond rounding, while ONNX runs at the batch size under test (and eager PyTorch
    # at batch 1 is slow enough to dominate the gate).
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(torch.from_numpy(rows)).numpy()
    finally:
        model.train(was_training)
    input_name = session.get_inputs()[0].name
    actual = np.concatenate(
        [
            session.run(None, {input_name: rows[start : start + batch_size]})[0]
            for start in range(0, len(rows), batch_size)
        ]
    )
    max_abs_diff = float(np.abs(actual - expected).max())
    max_abs_logit = float(np.abs(expected).max())
    allowed = tolerance * max(1.0, max_abs_logit)
    return ParityCheck(
        inputs=kind,
        batch_size=batch_size,
        rows=len(rows),
        max_abs_diff=max_abs_diff,
        max_abs_logit=max_abs_logit,
        allowed=allowed,
        passed=max_abs_diff <= allowed,
    )


def _predict(session: onnxruntime.InferenceSession, rows: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: rows})[0].argmax(axis=1)


def _compare_latency(
    fp32: onnxruntime.InferenceSession,
    int8: onnxruntime.InferenceSession,
    rows: np.ndarray,
    batch_size: int,
    repeats: int,
) -> LatencyComparison:
    batch = np.ascontiguousarray(np.resize(rows, (batch_size, rows.shape[1])))
    sessions = {"fp32": fp32, "int8": int8}
    feeds = {name: {s.get_inputs()[0].name: batch} for name, s in sessions.items()}
    timings: dict[str, list[float]] = {"fp32": [], "int8": []}
    # The models take turns in blocks of calls: turns put load from other processes on both
    # alike, and blocks keep each model's weights in cache, as in a replica serving one model.
    for block_start in range(0, repeats, _BLOCK):
        for name, session in sessions.items():
            for _ in range(_WARM_CALLS):
                session.run(None, feeds[name])
            for _ in range(min(_BLOCK, repeats - block_start)):
                start = time.perf_counter()
                session.run(None, feeds[name])
                timings[name].append(time.perf_counter() - start)
    fp32_p50 = float(np.median(timings["fp32"])) * 1e3
    int8_p50 = float(np.median(timings["int8"])) * 1e3
    return LatencyComparison(
        batch_size=batch_size,
        fp32_p50_ms=fp32_p50,
        int8_p50_ms=int8_p50,
        speedup=fp32_p50 / int8_p50,
    )
