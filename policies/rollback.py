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
    >>> decision.action
    'rollback'
    >>> print(decision.reasons[0])  # doctest: +NORMALIZE_WHITESPACE
    online accuracy 40.0% (60 rows) is 55.0 points below the champion 95.0%; at 95% confidence
    the drop is at least 43.5 points (limit 5)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
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
    """Roll back when online accuracy is, with confidence ``confidence``, more than
    ``max_drop_points`` percentage points below the reference: the champion's online accuracy
    over the same window (``"champion"``) or the candidate's own offline test accuracy
    (``"offline"``).

    Raw accuracies are noisy: at 100 labeled rows per side, two copies of a 95 %-accurate model
    differ by ~2.4 points (one standard deviation), so "more than 5 points lower" happens by
    chance in a few percent of windows, and more often when the rule is asked every few
    seconds. The rule therefore compares a one-sided lower confidence bound of the drop with the
    limit. Against the champion it is Newcombe's hybrid score bound for a difference of two
    proportions (Newcombe 1998, method 10; statsmodels'
    ``confint_proportions_2indep(method="newcomb")``): with Wilson bounds ``l1`` of the
    champion's accuracy ``p1`` and ``u2`` of the candidate's ``p2``, the drop is at least
    ``(p1 - p2) - sqrt((p1 - l1)**2 + (u2 - p2)**2)``. Against the offline figure, which is
    taken as exact, it is ``offline - u2``. Rolling back when that bound exceeds the limit is the
    one-sided test of "the drop is at most ``max_drop_points``" at level ``1 - confidence``.
    ``confidence=0.5`` gives the raw comparison.
    """

    max_drop_points: float
    reference: Literal["champion", "offline"] = "champion"
    confidence: float = 0.95
    """One-sided confidence of the bound, in [0.5, 1)."""
    basis: ClassVar[Basis] = "labels"

    def __post_init__(self) -> None:
        in_range(
            "max_drop_points", self.max_drop_points, 0.0, 100.0, low_open=False, high_open=True
        )
        if self.reference not in ("champion", "offline"):
            raise ValueError(f"reference must be 'champion' or 'offline', got {self.reference!r}")
        in_range("confidence", self.confidence, 0.5, 1.0, low_open=False, high_open=True)

    def __call__(self, candidate: WindowStats, champion: WindowStats | None) -> Verdict:
        if candidate.accuracy is None or candidate.labeled == 0:
            return Verdict("unknown", "candidate online accuracy not measured yet")
        z = NormalDist().inv_cdf(self.confidence)
        if self.reference == "champion":
            if champion is None or champion.accuracy is None or champion.labeled == 0:
                return Verdict("unknown", "champion online accuracy not measured yet")
            baseline, baseline_name = champion.accuracy, "the champion"
            drop_bound = difference_lower_bound(
                champion.accuracy, champion.labeled, candidate.accuracy, candidate.labeled, z
            )
        else:
            if candidate.offline_accuracy is None:
                return Verdict("unknown", "the candidate has no offline accuracy")
            baseline, baseline_name = candidate.offline_accuracy, "its offline figure"
            drop_bound = baseline - wilson_interval(candidate.accuracy, candidate.labeled, z)[1]
        drop_points = (baseline - candidate.accuracy) * 100.0
        description = (
            f"online accuracy {candidate.accuracy:.1%} ({candidate.labeled} rows) is "
            f"{drop_points:.1f} points below {baseline_name} {baseline:.1%}; at "
            f"{self.confidence:.0%} confidence the drop is at least {drop_bound * 100:.1f} points "
            f"(limit {self.max_drop_points:g})"
        )
        breached = drop_bound * 100.0 > self.max_drop_points
        return Verdict("breach" if breached else "pass", description)


def difference_lower_bound(
    first: float, first_rows: int, second: float, second_rows: int, z: float
) -> float:
    """Newcombe's hybrid score lower bound (1998, method 10) of ``first - second``, two
    proportions observed on ``first_rows`` and ``second_rows`` independent rows, ``z``
    standard errors below (``z = 0``: the raw difference).

    Newcombe's own example, 56/70 against 48/80 at two-sided 95 %: [0.0524, 0.3339].

    >>> round(difference_lower_bound(56 / 70, 70, 48 / 80, 80, 1.959964), 4)
    0.0524
    """
    first_low, _ = wilson_interval(first, first_rows, z)
    _, second_high = wilson_interval(second, second_rows, z)
    return first - second - math.hypot(first - first_low, second_high - second)


def wilson_interval(proportion: float, rows: int, z: float) -> tuple[float, float]:
    """Wilson score bounds of a proportion observed on ``rows`` rows, ``z`` standard errors
    wide on each side (``z = NormalDist().inv_cdf(0.95)`` for one-sided 95 % bounds).

    >>> [round(bound, 3) for bound in wilson_interval(0.9, 100, 1.959964)]
    [0.826, 0.945]
    """
    if rows <= 0:
        raise ValueError(f"rows must be > 0, got {rows}")
    if z == 0:
        return proportion, proportion
    z2 = z * z
    centre = (proportion + z2 / (2 * rows)) / (1 + z2 / rows)
    half_width = (
        z / (1 + z2 / rows) * math.sqrt(proportion * (1 - proportion) / rows + z2 / (4 * rows**2))
    )
    return max(centre - half_width, 0.0), min(centre + half_width, 1.0)


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
