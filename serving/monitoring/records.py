"""What the monitor takes in: answered requests, delayed labels, and what it must know about a
served version (schema, reference profile, offline accuracy).

Plain frozen records with no behaviour beyond reading a version from the registry; the
replicas, the monitoring actor and the label route pass them around
(:mod:`serving.monitoring.client`, :mod:`serving.monitoring.service`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One answered prediction request, as the observer hook reports it."""

    request_id: str
    version: int
    features: np.ndarray
    """``(rows, features)`` float32 inputs."""
    probabilities: np.ndarray
    """``(rows, classes)`` softmax outputs."""
    latency_s: float


@dataclass(frozen=True)
class LabelItem:
    """The true class of row ``row`` of request ``request_id``: a class index or name."""

    request_id: str
    label: int | str
    row: int = 0


@dataclass(frozen=True)
class VersionReference:
    """What the monitor needs to know about a version: its schema, reference profile and
    offline accuracy."""

    version: int
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    profile: dict[str, Any] | None
    offline_accuracy: float | None = None

    @classmethod
    def from_registry(cls, registry: Registry, version: int) -> VersionReference:
        source = registry.get(version)
        manifest = source.manifest
        try:
            profile = source.reference_profile()
        except (OSError, ValueError) as error:
            logger.error("version %d: no readable reference profile (%s)", version, error)
            profile = None
        accuracy = manifest.offline_metrics.get("accuracy")
        return cls(
            version,
            tuple(manifest.input_schema.feature_names),
            tuple(manifest.output_schema.class_names),
            profile,
            float(accuracy) if isinstance(accuracy, (int, float)) else None,
        )

    @staticmethod
    def loader(registry: Registry) -> Callable[[int], VersionReference]:
        return lambda version: VersionReference.from_registry(registry, version)
