"""The decisions a trimtab search explores, as small composable policies.

Gradient clipping (:func:`build_clip_policy`), numeric precision (:func:`build_precision`),
activation checkpointing (:class:`ActivationCheckpointing`) and the stability detector that
judges a run (:class:`StabilityDetector`). Nothing here imports Ray, reads files or speaks HTTP:
the training loop composes these objects.
"""

from policies.activation_checkpointing import ActivationCheckpointing, SavedTensorBytes
from policies.clipping import (
    CLIP_METHODS,
    AdaptiveGradientClipping,
    AutoClip,
    ClipByNorm,
    ClipByValue,
    ClipPolicy,
    ClipReport,
    NoClipping,
    ZClip,
    build_clip_policy,
)
from policies.precision import PRECISIONS, PrecisionPolicy, build_precision
from policies.stability import StabilityConfig, StabilityDetector, StabilityReport

__all__ = [
    "CLIP_METHODS",
    "PRECISIONS",
    "ActivationCheckpointing",
    "AdaptiveGradientClipping",
    "AutoClip",
    "ClipByNorm",
    "ClipByValue",
    "ClipPolicy",
    "ClipReport",
    "NoClipping",
    "PrecisionPolicy",
    "SavedTensorBytes",
    "StabilityConfig",
    "StabilityDetector",
    "StabilityReport",
    "ZClip",
    "build_clip_policy",
    "build_precision",
]
