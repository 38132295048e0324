"""Canary rollback rules: when a candidate model serving live traffic must be taken out.

Each rule has one job and sees the same evidence: :class:`WindowStats` of the candidate, and
of the champion serving beside it, over the most recent window of traffic. A rule answers with
a :class:`Verdict`: passed, breached (with the reason), or unknown (not enough evidence yet).
:class:`RollbackPolicy` composes rules, hides statistics drawn from fewer than ``min_samples``
rows, and decides: roll back if any rule is breached, hold if every rule passed, otherwise
wait for more evidence.

Nothing here knows where the statistics come from (``serving.monitoring`` computes them) or
what a rollback does (``serving.monitoring.canary`` moves traffic back to the champion).

Example::

    >>> policy = RollbackPolicy(
    ...     rules=(AccuracyDropRule(max_drop_points=5), CalibrationRule(max_ece=0.1)),
    ...     window=200,
    ...     min_samples=50,
    ... )
    >>> champion = WindowStats(labeled=120, accuracy=0.95, ece=0.03)
    >>> candidate = WindowStats(labeled=60, accuracy=0.40, ece=0.30)
    >>> decision = policy(candidate, champion)
    >>> decision.action, decision.reasons[0]
    ('rollback', 'online accuracy 40.0% is 55.0 points below the champion 95.0% (limit 5 points)')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from policies._validation import in_range, integer, positive, real_number

Basis = Literal["labels", "traffic"]
"""What a rule's statistics are drawn from: delayed labels joined to predictions, or every
prediction (inputs, outputs, latency)."""


@dataclass(frozen=True)
class WindowStats:
    """One model version's statistics over the most recent window.

    ``None`` means "not measured": no labels yet, no offline figure, too few rows.
    """

    labeled: int = 0
    """Predictions in the window whose delayed label has arrived."""
    observed: int = 0
    """Prediction rows in the window (labeled or not)."""
    accuracy: float | None = None
    """Online accuracy over the labeled rows, in [0, 1]."""
    ece: float | None = None
    """Expected calibration error over the labeled rows, in [0, 1]."""
    feature_psi: Mapping[str, float] = field(default_factory=dict)
    """Population stability index of each input feature against the reference profile."""
    p99_latency_s: float | None = None
    """99th percentile of request latency, in seconds."""
    offline_accuracy: float | None = None
    """Accuracy measured on the held-out test split when the version was registered."""

    def __post_init__(self) -> None:
        integer("labeled", self.labeled, minimum=0)
        integer("observed", self.observed, minimum=0)
        for name in ("accuracy", "ece", "offline_accuracy"):
            value = getattr(self, name)
            if value is not None:
                in_range(name, value, 0.0, 1.0, low_open=False, high_open=False)
        if self.p99_latency_s is not None and real_number("p99_latency_s", self.p99_latency_s) < 0:
            raise ValueError(f"p99_latency_s must be >= 0, got {self.p99_latency_s!r}")

    def with_min_samples(self, min_samples: int) -> WindowStats:
        """A copy without the statistics drawn from fewer than ``min_samples`` rows.

        The offline accuracy is not drawn from the window and is kept.
        """
        hidden: dict[str, Any] = {}
        if self.labeled < min_samples:
            hidden.update(accuracy=None, ece=None)
        if self.observed < min_samples:
            hidden.update(feature_psi={}, p99_latency_s=None)
        return dataclasses.replace(self, **hidden) if hidden else self


@dataclass(frozen=True)
class Verdict:
    """A rule's answer: ``"pass"``, ``"breach"`` or ``"unknown"``, and why."""

    outcome: Literal["pass", "breach", "unknown"]
    reason: str


class RollbackRule(Protocol):
    """One condition under which a candidate is rolled back."""

    basis: ClassVar[Basis]

    def __call__(self, candidate: WindowStats, champion: WindowStats | None) -> Verdict:
        """Judge the candidate; ``champion`` is ``None`` when nothing serves beside it."""
        ...


@dataclass(frozen=True)
class AccuracyDropRule:
    """Roll back when online accuracy is more than ``max_drop_points`` percentage points below
    the reference: the champion's online accuracy over the same window (``"champion"``) or the
    candidate's own offline test accuracy (``"offline"``)."""

    max_drop_points: float
    reference: Literal["champion", "offline"] = "champion"
    basis: ClassVar[Basis] = "labels"

    def __post_init__(self) -> None:
        in_range(
            "max_drop_points", self.max_drop_points, 0.0, 100.0, low_open=False, high_open=True
        )
        if self.reference not in ("champion", "offline"):
            raise ValueError(f"reference must be 'champion' or 'offline', got {self.reference!r}")

    def __call__(self, candidate: WindowStats, champion: WindowStats | None) -> Verdict:
        if candidate.accuracy is None:
            return Verdict("unknown", "candidate online accuracy not measured yet")
        if self.reference == "champion":
            if champion is None or champion.accuracy is None:
                return Verdict("unknown", "champion online accuracy not measured yet")
            baseline, baseline_name = champion.accuracy, "the champion"
        else:
            if candidate.offline_accuracy is None:
                return Verdict("unknown", "the candidate has no offline accuracy")
            baseline, baseline_name = candidate.offline_accuracy, "its offline figure"
        drop_points = (baseline - candidate.accuracy) * 100.0
        description = (
            f"online accuracy {candidate.accuracy:.1%} is {drop_points:.1f} points below "
            f"{baseline_name} {baseline:.1%} (limit {self.max_drop_points:g} points)"
        )
        return Verdict("breach" if drop_points > self.max_drop_points else "pass", description)


@dataclass(frozen=True)
class CalibrationRule:
    """Roll back when the expected calibration error is above ``max_ece``."""

    max_ece: float
    basis: ClassVar[Basis] = "labels"

    def __post_init__(self) -> None:
        in_range("max_ece", self.max_ece, 0.0, 1.0, low_open=True, high_open=True)

    def __call__(self, candidate: WindowStats, champion: WindowStats | None) -> Verdict:
        if candidate.ece is None:
            return Verdict("unknown", "candidate calibration not measured yet")
        outcome = "breach" if candidate.ece > self.max_ece else "pass"
        return Verdict(outcome, f"ECE {candidate.ece:.3f} (limit {self.max_ece:g})")


@dataclass(frozen=True)
class DriftRule:
    """Roll back when more than ``max_share`` of the input features have a PSI above
    ``psi_threshold`` (0.25 is the usual "significant shift")."""

    psi_threshold: float = 0.25
    max_share: float = 0.5
    basis: ClassVar[Basis] = "traffic"

    def __post_init__(self) -> None:
        positive("psi_threshold", self.psi_threshold)
        in_range("max_share", self.max_share, 0.0, 1.0, low_open=False, high_open=True)

    def __call__(self, candidate: WindowStats, champion: WindowStats | None) -> Verdict:
        if not candidate.feature_psi:
            return Verdict("unknown", "input drift not measured yet")
        drifted = sum(psi > self.psi_threshold for psi in candidate.feature_psi.values())
        share = drifted / len(candidate.feature_psi)
        description = (
            f"{drifted} of {len(candidate.feature_psi)} features ({share:.0%}) have PSI > "
            f"{self.psi_threshold:g} (limit {self.max_share:.0%})"
        )
        return Verdict("breach" if share > self.max_share else "pass", description)


@dataclass(frozen=True)
class LatencyRule:
    """Roll back when the 99th percentile latency is above the SLO ``p99_slo_s`` (seconds)."""

    p99_slo_s: float
    basis: ClassVar[Basis] = "traffic"

    def __post_init__(self) -> None:
        positive("p99_slo_s", self.p99_slo_s)

    def __call__(self, candidate: WindowStats, champion: WindowStats | None) -> Verdict:
        if candidate.p99_latency_s is None:
            return Verdict("unknown", "latency not measured yet")
        outcome = "breach" if candidate.p99_latency_s > self.p99_slo_s else "pass"
        return Verdict(
            outcome, f"p99 latency {candidate.p99_latency_s:.3f} s (SLO {self.p99_slo_s:g} s)"
        )


@dataclass(frozen=True)
class RollbackDecision:
    """What :class:`RollbackPolicy` decided and why.

    ``action`` is ``"rollback"`` (some rule breached: ``reasons`` lists the breaches),
    ``"hold"`` (every rule passed) or ``"wait"`` (no breach, but some rule lacks evidence:
    ``reasons`` says which).
    """

    action: Literal["rollback", "hold", "wait"]
    reasons: tuple[str, ...]
    verdicts: tuple[Verdict, ...]

    @property
    def rollback(self) -> bool:
        return self.action == "rollback"


@dataclass(frozen=True)
class RollbackPolicy:
    """Rules judged together over the most recent ``window`` rows of each version.

    A statistic drawn from fewer than ``min_samples`` rows (labeled rows for accuracy and
    calibration, observed rows for drift and latency) counts as not measured, for the
    candidate and the champion alike.
    """

    rules: tuple[RollbackRule, ...]
    window: int = 500
    min_samples: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.rules, (str, bytes)) or not isinstance(self.rules, Sequence):
            raise ValueError(f"rules must be a sequence of rules, got {self.rules!r}")
        object.__setattr__(self, "rules", tuple(self.rules))
        if not self.rules:
            raise ValueError("a rollback policy needs at least one rule")
        for rule in self.rules:
            if not callable(rule) or getattr(rule, "basis", None) not in ("labels", "traffic"):
                raise ValueError(f"not a rollback rule: {rule!r}")
        integer("window", self.window, minimum=1)
        integer("min_samples", self.min_samples, minimum=1)
        if self.min_samples > self.window:
            raise ValueError(
                f"min_samples ({self.min_samples}) cannot exceed the window ({self.window})"
            )

    def __call__(self, candidate: WindowStats, champion: WindowStats | None) -> RollbackDecision:
        candidate = candidate.with_min_samples(self.min_samples)
        if champion is not None:
            champion = champion.with_min_samples(self.min_samples)
        verdicts = tuple(rule(candidate, champion) for rule in self.rules)
        breaches = tuple(v.reason for v in verdicts if v.outcome == "breach")
        if breaches:
            return RollbackDecision("rollback", breaches, verdicts)
        unknown = tuple(v.reason for v in verdicts if v.outcome == "unknown")
        if unknown:
            return RollbackDecision("wait", unknown, verdicts)
        return RollbackDecision("hold", (), verdicts)


_RULE_KINDS: dict[str, type] = {
    "accuracy_drop": AccuracyDropRule,
    "calibration": CalibrationRule,
    "drift": DriftRule,
    "latency": LatencyRule,
}


def build_rollback_policy(settings: Mapping[str, Any]) -> RollbackPolicy:
    """A policy from plain settings (a YAML/JSON section): ``window``, ``min_samples`` and
    ``rules``, each rule a ``kind`` (``accuracy_drop``, ``calibration``, ``drift``,
    ``latency``) and that rule's arguments. For example ``{"window": 200, "min_samples": 50,
    "rules": [{"kind": "accuracy_drop", "max_drop_points": 5}, {"kind": "drift"}]}``.
    """
    unknown_keys = set(settings) - {"rules", "window", "min_samples"}
    if unknown_keys:
        raise ValueError(f"unknown rollback settings {sorted(unknown_keys)}")
    rules = []
    for index, rule_settings in enumerate(settings.get("rules", ())):
        options = dict(rule_settings)
        kind = options.pop("kind", None)
        if kind not in _RULE_KINDS:
            raise ValueError(
                f"rules[{index}].kind must be one of {sorted(_RULE_KINDS)}, got {kind!r}"
            )
        try:
            rules.append(_RULE_KINDS[kind](**options))
        except TypeError as error:
            raise ValueError(f"rules[{index}] ({kind}): {error}") from None
    extra = {key: settings[key] for key in ("window", "min_samples") if key in settings}
    return RollbackPolicy(rules=tuple(rules), **extra)
