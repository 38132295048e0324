"""A registered version's manifest (``manifest.json``): what it is, where it came from, how it
was gated. Its own module so that the registry (which writes it) and the model card (which
renders it) both import it, and neither imports the other."""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from serving.gate_result import gate_record_problem
from serving.model_schema import InputSchema, OutputSchema


class Manifest(pydantic.BaseModel, extra="forbid", frozen=True):
    """Everything known about one registered version; ``manifest.json`` on disk."""

    version: int
    sha256: str
    created_at: str
    """ISO 8601, UTC."""
    model_name: str
    """The name clients use (the v2 protocol's model name), e.g. ``"digits"``."""
    lineage: dict[str, Any]
    """Where the model came from: ``{"study": ..., "trial": ..., "checkpoint": ..., ...}``."""
    training_config: dict[str, Any]
    offline_metrics: dict[str, Any]
    """``{"accuracy": ..., "per_class": {...}, ...}`` on the held-out test split."""
    quantization: Literal["none", "dynamic", "static"]
    gate: dict[str, Any]
    """A passed :class:`~serving.gate_result.GateResult` (``"passed": true``) or an explicit
    override (``{"override": reason, "passed": false}``); a manifest with neither is invalid,
    so no version that skipped the gate silently is ever read, let alone served."""
    input_schema: InputSchema
    output_schema: OutputSchema

    @pydantic.field_validator("gate")
    @classmethod
    def _gate_passed_or_overridden(cls, gate: dict[str, Any]) -> dict[str, Any]:
        problem = gate_record_problem(gate)
        if problem is not None:
            raise ValueError(f"{problem}: a version needs a passed gate or an explicit override")
        return gate

    @property
    def gate_overridden(self) -> bool:
        """Registered without the gate, by an explicit override."""
        return "override" in self.gate
