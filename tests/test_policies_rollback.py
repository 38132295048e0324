"""Canary rollback rules and the policy that composes them: no Ray, no files, no HTTP."""

from __future__ import annotations

import doctest
import itertools
from statistics import NormalDist

import pytest

import policies.rollback
from policies.rollback import (
    AccuracyDropRule,
    CalibrationRule,
    DriftRule,
    LatencyRule,
    RollbackPolicy,
    Verdict,
    WindowStats,
    difference_lower_bound,
    wilson_interval,
)

GOOD_CHAMPION = WindowStats(labeled=400, observed=400, accuracy=0.95, ece=0.02)


def test_module_example_runs() -> None:
    assert doctest.testmod(policies.rollback).failed == 0


# ----------------------------------------------------------------------------- each rule


def test_accuracy_drop_against_the_champion_judges_a_confidence_bound() -> None:
    rule = AccuracyDropRule(max_drop_points=5)  # one-sided 95 % by default
    # 6 points lower on 100 rows is within noise: the drop is only known to be >= 1.3 points.
    noisy = rule(WindowStats(labeled=100, accuracy=0.89), GOOD_CHAMPION)
    assert noisy == Verdict(
        "pass",
        "online accuracy 89.0% (100 rows) is 6.0 points below the champion 95.0%; at 95% "
        "confidence the drop is at least 1.3 points (limit 5)",
    )
    # The raw comparison (confidence 0.5) would have rolled it back.
    raw = AccuracyDropRule(max_drop_points=5, confidence=0.5)
    assert raw(WindowStats(labeled=100, accuracy=0.89), GOOD_CHAMPION).outcome == "breach"
    # 8 points on 2,000 rows per side is evidence of more than 5.
    many = WindowStats(labeled=2000, accuracy=0.95)
    assert rule(WindowStats(labeled=2000, accuracy=0.87), many).outcome == "breach"
    assert rule(WindowStats(labeled=2000, accuracy=0.89), many).outcome == "pass"
    # A stricter confidence needs more evidence for the same data.
    mid = WindowStats(labeled=400, accuracy=0.85)
    assert rule(mid, GOOD_CHAMPION).outcome == "breach"
    assert AccuracyDropRule(5, confidence=0.9999).__call__(mid, GOOD_CHAMPION).outcome == "pass"
    # Better than the champion is a pass, however large the difference.
    better = rule(WindowStats(labeled=50, accuracy=1.0), WindowStats(labeled=50, accuracy=0.2))
    assert better.outcome == "pass"
    assert rule(WindowStats(labeled=50, accuracy=0.5), None).outcome == "unknown"
    assert rule(WindowStats(), GOOD_CHAMPION).outcome == "unknown"
    assert rule(WindowStats(labeled=10, accuracy=0.5), WindowStats()).outcome == "unknown"


def test_the_drop_bound_is_newcombes_and_never_above_the_raw_difference() -> None:
    # Newcombe (1998), Table II, example (a): 56/70 - 48/80, method 10: [0.0524, 0.3339].
    z = NormalDist().inv_cdf(0.975)
    assert difference_lower_bound(56 / 70, 70, 48 / 80, 80, z) == pytest.approx(0.0524, abs=1e-4)
    assert -difference_lower_bound(48 / 80, 80, 56 / 70, 70, z) == pytest.approx(0.3339, abs=1e-4)
    assert wilson_interval(0.0, 10, z)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(1.0, 10, z)[1] == pytest.approx(1.0)
    for first, second, rows in itertools.product((0.0, 0.5, 0.97, 1.0), (0.1, 0.9), (1, 30)):
        raw = first - second
        assert difference_lower_bound(first, rows, second, rows, 0.0) == pytest.approx(raw)
        bounds = [difference_lower_bound(first, rows, second, rows, z) for z in (0.5, 1.6, 3.0)]
        assert bounds == sorted(bounds, reverse=True) and bounds[0] <= raw


def test_accuracy_drop_against_the_offline_figure() -> None:
    rule = AccuracyDropRule(max_drop_points=2, reference="offline")
    clear = rule(WindowStats(labeled=400, accuracy=0.85, offline_accuracy=0.96), None)
    assert clear.outcome == "breach"
    assert "at 95% confidence the drop is at least 8.3 points (limit 2)" in clear.reason
    noisy = WindowStats(labeled=100, accuracy=0.93, offline_accuracy=0.96)
    assert rule(noisy, None).outcome == "pass"
    missing = rule(WindowStats(labeled=100, accuracy=0.95), GOOD_CHAMPION)
    assert missing == Verdict("unknown", "the candidate has no offline accuracy")


def test_calibration_rule() -> None:
    rule = CalibrationRule(max_ece=0.1)
    assert rule(WindowStats(ece=0.1), None).outcome == "pass"
    assert rule(WindowStats(ece=0.11), None) == Verdict("breach", "ECE 0.110 (limit 0.1)")
    assert rule(WindowStats(), None).outcome == "unknown"


def test_drift_rule_counts_the_share_of_drifted_features() -> None:
    rule = DriftRule()  # PSI > 0.25 on more than half of the features
    half = {"a": 0.3, "b": 0.3, "c": 0.0, "d": 0.1}
    assert rule(WindowStats(feature_psi=half), None).outcome == "pass"
    most = {**half, "c": 0.26}
    assert rule(WindowStats(feature_psi=most), None) == Verdict(
        "breach", "3 of 4 features (75%) have PSI > 0.25 (limit 50%)"
    )
    assert rule(WindowStats(), None).outcome == "unknown"


def test_latency_rule() -> None:
    rule = LatencyRule(p99_slo_s=0.2)
    assert rule(WindowStats(p99_latency_s=0.2), None).outcome == "pass"
    assert rule(WindowStats(p99_latency_s=0.25), None).outcome == "breach"
    assert rule(WindowStats(), None).outcome == "unknown"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AccuracyDropRule(max_drop_points=-1), "max_drop_points must be in"),
        (lambda: AccuracyDropRule(max_drop_points=5, reference="best"), "reference must be"),
        (lambda: AccuracyDropRule(5, confidence=0.4), r"confidence must be in \[0.5, 1.0\)"),
        (lambda: AccuracyDropRule(5, confidence=1.0), r"confidence must be in \[0.5, 1.0\)"),
        (lambda: CalibrationRule(max_ece=0), "max_ece must be in"),
        (lambda: CalibrationRule(max_ece=float("nan")), "max_ece must be finite"),
        (lambda: DriftRule(psi_threshold=0), "psi_threshold must be > 0"),
        (lambda: DriftRule(max_share=1.0), "max_share must be in"),
        (lambda: LatencyRule(p99_slo_s="fast"), "p99_slo_s must be a number"),
        (lambda: RollbackPolicy(rules=()), "at least one rule"),
        (lambda: RollbackPolicy(rules=("drift",)), "not a rollback rule"),
        (lambda: RollbackPolicy(rules=(DriftRule(),), window=0), "window must be >= 1"),
        (
            lambda: RollbackPolicy(rules=(DriftRule(),), window=10, min_samples=20),
            "min_samples \\(20\\) cannot exceed the window \\(10\\)",
        ),
        (lambda: WindowStats(accuracy=1.5), "accuracy must be in"),
        (lambda: WindowStats(labeled=-1), "labeled must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_the_value(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# ----------------------------------------------------------------------------- the policy


def test_policy_rolls_back_on_any_breach_and_lists_every_reason() -> None:
    policy = RollbackPolicy(
        rules=(AccuracyDropRule(max_drop_points=5), CalibrationRule(max_ece=0.1), DriftRule()),
        window=100,
        min_samples=20,
    )
    bad = WindowStats(labeled=50, observed=50, accuracy=0.1, ece=0.5, feature_psi={"a": 0.0})
    decision = policy(bad, GOOD_CHAMPION)
    assert decision.action == "rollback" and decision.rollback
    assert decision.reasons == (
        "online accuracy 10.0% (50 rows) is 85.0 points below the champion 95.0%; at 95% "
        "confidence the drop is at least 75.6 points (limit 5)",
        "ECE 0.500 (limit 0.1)",
    )
    assert [v.outcome for v in decision.verdicts] == ["breach", "breach", "pass"]


def test_policy_waits_below_min_samples_then_holds() -> None:
    policy = RollbackPolicy(
        rules=(AccuracyDropRule(max_drop_points=5), LatencyRule(p99_slo_s=1.0)),
        window=100,
        min_samples=30,
    )
    # Terrible, but drawn from 29 labeled rows: not yet evidence.
    early = WindowStats(labeled=29, observed=29, accuracy=0.0, p99_latency_s=9.0)
    decision = policy(early, GOOD_CHAMPION)
    assert decision.action == "wait" and not decision.rollback
    assert decision.reasons == (
        "candidate online accuracy not measured yet",
        "latency not measured yet",
    )
    # A champion with too few labels cannot serve as the reference either.
    thin_champion = WindowStats(labeled=10, accuracy=1.0)
    fine = WindowStats(labeled=30, observed=30, accuracy=0.94, p99_latency_s=0.1)
    assert policy(fine, thin_champion).action == "wait"
    assert policy(fine, GOOD_CHAMPION) == policy(fine, GOOD_CHAMPION)
    assert policy(fine, GOOD_CHAMPION).action == "hold"
    assert policy(fine, GOOD_CHAMPION).reasons == ()


def test_a_breach_wins_over_missing_evidence() -> None:
    policy = RollbackPolicy(
        rules=(AccuracyDropRule(max_drop_points=5), LatencyRule(p99_slo_s=0.1)),
        window=10,
        min_samples=5,
    )
    slow_unlabeled = WindowStats(labeled=0, observed=10, p99_latency_s=0.5)
    assert policy(slow_unlabeled, None).action == "rollback"


def test_any_object_with_a_basis_and_a_call_is_a_rule() -> None:
    class NeverRule:
        basis = "traffic"

        def __call__(self, candidate: WindowStats, champion: WindowStats | None) -> Verdict:
            return Verdict("breach", "never")

    decision = RollbackPolicy(rules=[NeverRule()], window=1, min_samples=1)(WindowStats(), None)
    assert decision.reasons == ("never",)
