"""What the gate measured, as typed records that the registry can check without importing
torch or onnxruntime (:mod:`serving.gate` runs the checks; :mod:`serving.registry` refuses a
version without a passed :class:`GateResult` or an explicit :class:`GateOverride`).

A manifest stores :meth:`GateResult.to_dict` or :meth:`GateOverride.to_dict`; both carry
``"passed"`` and :func:`gate_record_problem` says what is wrong with any other record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ParityCheck:
    """FP32 ONNX against PyTorch on one kind of input at one batch size."""

    inputs: Literal["real", "random"]
    batch_size: int
    rows: int
    max_abs_diff: float
    max_abs_logit: float
    allowed: float
    passed: bool


@dataclass(frozen=True)
class LatencyComparison:
    """Median latency of FP32 ONNX and INT8 at one batch size."""

    batch_size: int
    fp32_p50_ms: float
    int8_p50_ms: float
    speedup: float
    """``fp32_p50_ms / int8_p50_ms``: above 1 means INT8 is faster."""


@dataclass(frozen=True)
class GateResult:
    """Everything the gate measured and what it chose; :meth:`to_dict` is JSON-able.

    The decision is taken on the ``split`` rows (the validation split): the test split is
    left for the offline metrics a version reports.
    """

    parity: tuple[ParityCheck, ...]
    split: str
    """The split the accuracy, agreement and latency checks (and the real parity rows) used."""
    rows: int
    """Rows of that split."""
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_drop: float
    """``fp32_accuracy − int8_accuracy`` on ``split``."""
    max_accuracy_drop: float
    int8_agreement: float
    """Share of ``split`` rows on which INT8 and FP32 ONNX predict the same class."""
    accuracy_passed: bool
    latency: tuple[LatencyComparison, ...]
    min_speedup: float
    latency_passed: bool
    chosen: Literal["int8", "fp32"]
    reason: str
    int8_mode: Literal["static", "dynamic"] | None = None
    """How the INT8 candidate was quantized (``serving.ship`` fills it in)."""

    @property
    def passed(self) -> bool:
        """The chosen artifact may be registered: every parity check passed and an artifact
        was chosen (an INT8 model that failed accuracy or latency falls back to FP32, which
        still passes)."""
        return bool(self.parity) and all(check.passed for check in self.parity)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (lists, not tuples), as stored in a manifest."""
        record = dataclasses.asdict(self)
        record["parity"] = list(record["parity"])
        record["latency"] = list(record["latency"])
        record["passed"] = self.passed
        return record


@dataclass(frozen=True)
class GateOverride:
    """Registration without the gate, for experiments and benchmarks only: the reason is
    logged as a warning and stored in the manifest (``{"override": reason, "passed": false}``)
    and on the model card."""

    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ValueError(f"a gate override needs a non-empty reason, got {self.reason!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"override": self.reason, "passed": False}


def gate_record_problem(record: dict[str, Any]) -> str | None:
    """Why a manifest's gate record does not show a passed gate or an explicit override
    (``None`` when it does)."""
    if isinstance(record.get("override"), str) and record["override"].strip():
        return None
    if record.get("passed") is True and record.get("chosen") in ("int8", "fp32"):
        return None
    if not record:
        return "no gate result recorded"
    return "the gate result does not say it passed"


def checked_gate_record(gate: GateResult | None, gate_override: str | None) -> dict[str, Any]:
    """The manifest record of a passed ``gate`` or of an explicit ``gate_override`` (exactly
    one of them); ``ValueError`` for anything else: no gate, a dict, a failed gate."""
    if gate is not None and gate_override is not None:
        raise ValueError("pass either a gate result or a gate override, not both")
    if gate_override is not None:
        return GateOverride(gate_override).to_dict()
    if gate is None:
        raise ValueError(
            "refusing to register a version without a passed gate: pass gate= (what "
            "serving.gate.run_gate returns) or, for an experiment, gate_override='<reason>'"
        )
    if not isinstance(gate, GateResult):
        raise ValueError(
            f"gate must be a serving.gate.GateResult, got {type(gate).__name__}; a dict is "
            "not a gate result"
        )
    if not gate.passed:
        failed = [f"{c.inputs} @ batch {c.batch_size}" for c in gate.parity if not c.passed]
        raise ValueError(f"refusing to register a version that failed the gate ({failed})")
    return gate.to_dict()
