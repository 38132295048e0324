"""Canary rollback rules and the policy that composes them: no Ray, no files, no HTTP."""

from __future__ import annotations

import doctest

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
    build_rollback_policy,
)

GOOD_CHAMPION = WindowStats(labeled=400, observed=400, accuracy=0.95, ece=0.02)


def test_module_example_runs() -> None:
    assert doctest.testmod(policies.rollback).failed == 0


# ----------------------------------------------------------------------------- each rule


def test_accuracy_drop_against_the_champion() -> None:
    rule = AccuracyDropRule(max_drop_points=5)
    assert rule(WindowStats(labeled=100, accuracy=0.91), GOOD_CHAMPION).outcome == "pass"
    breach = rule(WindowStats(labeled=100, accuracy=0.89), GOOD_CHAMPION)
    assert breach == Verdict(
        "breach",
        "online accuracy 89.0% is 6.0 points below the champion 95.0% (limit 5 points)",
    )
    # Better than the champion is a pass, however large the difference.
    assert rule(WindowStats(accuracy=1.0), WindowStats(accuracy=0.2)).outcome == "pass"
    assert rule(WindowStats(accuracy=0.5), None).outcome == "unknown"
    assert rule(WindowStats(), GOOD_CHAMPION).outcome == "unknown"


def test_accuracy_drop_against_the_offline_figure() -> None:
    rule = AccuracyDropRule(max_drop_points=2, reference="offline")
    assert rule(WindowStats(accuracy=0.93, offline_accuracy=0.96), None).outcome == "breach"
    assert rule(WindowStats(accuracy=0.95, offline_accuracy=0.96), None).outcome == "pass"
    missing = rule(WindowStats(accuracy=0.95), GOOD_CHAMPION)
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
        "online accuracy 10.0% is 85.0 points below the champion 95.0% (limit 5 points)",
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


def test_policy_from_plain_settings() -> None:
    policy = build_rollback_policy(
        {
            "window": 200,
            "min_samples": 50,
            "rules": [
                {"kind": "accuracy_drop", "max_drop_points": 5, "reference": "offline"},
                {"kind": "calibration", "max_ece": 0.1},
                {"kind": "drift"},
                {"kind": "latency", "p99_slo_s": 0.25},
            ],
        }
    )
    assert policy == RollbackPolicy(
        rules=(
            AccuracyDropRule(5, "offline"),
            CalibrationRule(0.1),
            DriftRule(),
            LatencyRule(0.25),
        ),
        window=200,
        min_samples=50,
    )
    with pytest.raises(ValueError, match=r"rules\[0\]\.kind must be one of"):
        build_rollback_policy({"rules": [{"kind": "vibes"}]})
    with pytest.raises(ValueError, match=r"rules\[0\] \(drift\): .*unexpected keyword"):
        build_rollback_policy({"rules": [{"kind": "drift", "psi": 0.2}]})
    with pytest.raises(ValueError, match="unknown rollback settings \\['windows'\\]"):
        build_rollback_policy({"windows": 3, "rules": [{"kind": "drift"}]})
