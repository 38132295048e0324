"""The decisions a trimtab search explores, as small composable policies.

Gradient clipping (:func:`build_clip_policy`), numeric precision (:func:`build_precision`),
activation checkpointing (:class:`ActivationCheckpointing`) and the stability detector that
judges a run (:class:`StabilityDetector`) and what to do about a spike
(:func:`build_recovery_policy`), composed by the training loop; the choice of a
winner from the Pareto front (:func:`build_selection_policy`), made by the search; and the
rules that roll a canary back (:class:`RollbackPolicy`), applied by online monitoring.
Nothing here imports Ray, reads files or speaks HTTP.
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
from policies.recovery import (
    RECOVERY_POLICIES,
    NoRecovery,
    RecoveryAction,
    RecoveryConfig,
    RecoveryPolicy,
    RewindOnSpike,
    SkipSpikes,
    build_recovery_policy,
)
from policies.rollback import (
    AccuracyDropRule,
    CalibrationRule,
    DriftRule,
    LatencyRule,
    RollbackDecision,
    RollbackPolicy,
    RollbackRule,
    WindowStats,
)
from policies.selection import (
    Candidate,
    CheapestWithin,
    KneePoint,
    PreferLowerValidationLoss,
    Selection,
    SelectionPolicy,
    build_selection_policy,
    pareto_indices,
)
from policies.stability import StabilityConfig, StabilityDetector, StabilityReport

__all__ = [
    "CLIP_METHODS",
    "PRECISIONS",
    "RECOVERY_POLICIES",
    "AccuracyDropRule",
    "ActivationCheckpointing",
    "AdaptiveGradientClipping",
    "AutoClip",
    "CalibrationRule",
    "Candidate",
    "CheapestWithin",
    "ClipByNorm",
    "ClipByValue",
    "ClipPolicy",
    "ClipReport",
    "DriftRule",
    "KneePoint",
    "LatencyRule",
    "NoClipping",
    "NoRecovery",
    "PrecisionPolicy",
    "PreferLowerValidationLoss",
    "RecoveryAction",
    "RecoveryConfig",
    "RecoveryPolicy",
    "RewindOnSpike",
    "RollbackDecision",
    "RollbackPolicy",
    "RollbackRule",
    "SavedTensorBytes",
    "Selection",
    "SelectionPolicy",
    "SkipSpikes",
    "StabilityConfig",
    "StabilityDetector",
    "StabilityReport",
    "WindowStats",
    "ZClip",
    "build_clip_policy",
    "build_precision",
    "build_recovery_policy",
    "build_selection_policy",
    "pareto_indices",
]
