"""The monitor, the canary controller and the monitoring service, on a real registry of tiny
ONNX models and scikit-learn as the reference. No Ray, no HTTP.

The tiny registry, its rows and the recording Prometheus fake live in
``tests/monitoring_helpers.py`` (shared with ``test_serving_monitoring_http.py``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from policies.rollback import AccuracyDropRule, DriftRule, RollbackPolicy
from serving.monitoring.canary import CanaryController, CanaryError, canary_fraction
from serving.monitoring.config import FeatureRangeSlice, FeatureValueSlice, MonitoringConfig
from serving.monitoring.labels import LABEL_GRACE_S
from serving.monitoring.monitor import LabelItem, Monitor, Observation, VersionReference
from serving.monitoring.service import MonitoringService
from serving.registry import Registry
from tests.monitoring_helpers import (
    CLASS_NAMES,
    GOOD_WEIGHTS,
    RecordingRecorder,
    build_tiny_registry,
    sample_rows,
    sklearn_online,
    softmax,
    true_labels,
)
from tests.waiting import wait_until

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    return build_tiny_registry(tmp_path / "registry")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- the monitor


def test_shuffled_late_labels_give_scikit_learn_metrics_per_version_and_slice(registry):
    clock = FakeClock()
    config = MonitoringConfig(
        window_size=400,
        min_samples=50,
        retention_s=60.0,
        slices=(FeatureRangeSlice("f0-positive", "f0", low=0.0), FeatureValueSlice("f3", 2)),
        rollback=RollbackPolicy(rules=(DriftRule(),), window=100, min_samples=10),
    )
    monitor = Monitor(config, VersionReference.loader(registry), clock=clock)
    features = sample_rows(300, seed=5)
    features[:, 3] = np.round(features[:, 3])  # a few distinct values for the slice column
    labels = true_labels(features)
    probabilities = softmax(features @ GOOD_WEIGHTS)
    # 100 requests of 3 rows each, observed through the hook.
    for request in range(100):
        rows = slice(3 * request, 3 * request + 3)
        monitor.observe(f"r{request}", 1, features[rows], probabilities[rows], 0.001 * request)
    monitor.flush()

    order = np.random.default_rng(0).permutation(300)
    items = [LabelItem(f"r{i // 3}", int(labels[i]), i % 3) for i in order]
    # Class names work as labels too.
    items[:10] = [
        LabelItem(item.request_id, CLASS_NAMES[int(item.label)], item.row) for item in items[:10]
    ]
    first = monitor.add_labels(items[:150])
    clock.now = 30.0  # late, but within the retention
    second = monitor.add_labels(
        [*items[150:], items[0], LabelItem("never-seen", 1), LabelItem("r1", 7, 1)]
    )
    assert first == {
        "joined": 150,
        "pending": 0,
        "duplicate": 0,
        "late": 0,
        "unknown": 0,
        "invalid": 0,
    }
    # A label for an id never seen may have overtaken its prediction: it is held.
    assert second == {
        "joined": 150,
        "pending": 1,
        "duplicate": 2,
        "late": 0,
        "unknown": 0,
        "invalid": 0,
    }

    summary = monitor.summary()
    json.dumps(summary, allow_nan=False)  # plain JSON, no NaN
    version = summary["versions"]["1"]
    expected = sklearn_online(labels, probabilities)
    for name, value in expected.items():
        assert version["online"][name] == pytest.approx(value, abs=1e-12), name
    assert version["online"]["labeled"] == 300 and version["online"]["enough_rows"]
    assert version["requests"] == 100 and version["rows"] == 300
    assert version["latency_s"]["max"] == pytest.approx(0.099)

    # The slice column: the first two values seen get their own slice, the rest "other".
    values = features[:, 3] + 0.0  # -0.0 is 0
    first_two = list(dict.fromkeys(values.tolist()))[:2]
    column_keys = np.array(
        [f"f3={value:g}" if value in first_two else "f3=other" for value in values]
    )
    slices = {"f0-positive": features[:, 0] >= 0.0}
    slices.update({key: column_keys == key for key in set(column_keys)})
    assert set(version["slices"]) == set(slices)
    for name, mask in slices.items():
        expected_slice = sklearn_online(labels[mask], probabilities[mask])
        for metric, value in expected_slice.items():
            assert version["slices"][name][metric] == pytest.approx(value, abs=1e-12), name

    clock.now = 100.0  # past the retention: a label now is late
    assert monitor.add_labels([LabelItem("r5", 0)])["late"] == 1


def test_a_label_that_overtakes_its_prediction_is_held_and_joined(registry):
    clock = FakeClock()
    monitor = Monitor(MonitoringConfig(), VersionReference.loader(registry), clock=clock)
    features = sample_rows(2, seed=5)
    probabilities = softmax(features @ GOOD_WEIGHTS)
    early = monitor.add_labels([LabelItem("early", 1), LabelItem("early", 0, row=1)])
    assert early["pending"] == 2 and early["joined"] == 0
    assert monitor.summary()["labels"]["held_labels"] == 2
    monitor.ingest([Observation("early", 1, features, probabilities, 0.01)])
    summary = monitor.summary()
    assert summary["labels"]["joined"] == 2 and summary["labels"]["held_labels"] == 0
    assert summary["versions"]["1"]["online"]["labeled"] == 2
    # One that never finds its prediction is counted as expired after the grace period.
    monitor.add_labels([LabelItem("never", 1)])
    clock.now += LABEL_GRACE_S + 1
    labels = monitor.summary()["labels"]
    assert labels["held_labels"] == 0 and labels["expired_held_labels"] == 1


def test_everything_kept_is_bounded_and_holds_no_features(registry):
    config = MonitoringConfig(
        window_size=50,
        min_samples=10,
        max_pending_predictions=120,
        rollback=RollbackPolicy(rules=(DriftRule(),), window=50, min_samples=10),
    )
    monitor = Monitor(config, VersionReference.loader(registry))
    features = sample_rows(1000, seed=1)
    probabilities = softmax(features @ GOOD_WEIGHTS)
    for index in range(1000):
        monitor.observe(
            f"id{index}", 1, features[index : index + 1], probabilities[index : index + 1], 0.01
        )
    monitor.flush()
    labels = true_labels(features)
    outcomes = monitor.add_labels([LabelItem(f"id{i}", int(labels[i])) for i in range(1000)])
    # The newest 120 join; the 120 that left before them are remembered as late; older ids
    # are forgotten altogether (the memory of departed ids is bounded too): their labels wait
    # for a prediction that may still come.
    assert outcomes["joined"] == 120 and outcomes["late"] == 120 and outcomes["pending"] == 760
    summary = monitor.summary()
    version = summary["versions"]["1"]
    assert summary["labels"]["pending_predictions"] == 120
    assert version["window_rows"] == 50 and version["online"]["labeled"] == 50
    assert version["drift"]["rows"] == 50
    # The label join keeps no feature values.
    pending = next(iter(monitor._store._pending.values()))
    assert set(pending.__slots__) == {
        "version",
        "predicted",
        "confidence",
        "slice_keys",
        "observed_at",
        "labeled",
    }


def test_observing_is_thread_safe_and_drops_beyond_the_queue_bound(registry):
    config = MonitoringConfig(
        window_size=5000,
        max_queued_observations=100_000,
        rollback=RollbackPolicy(rules=(DriftRule(),), window=100, min_samples=10),
    )
    monitor = Monitor(config, VersionReference.loader(registry))
    features = sample_rows(1, seed=2)
    probabilities = softmax(features @ GOOD_WEIGHTS)

    def client(thread: int) -> None:
        for index in range(500):
            monitor.observe(f"t{thread}-{index}", 1, features, probabilities, 0.001)
            if index % 50 == 0:
                monitor.add_labels([LabelItem(f"t{thread}-{index}", 0)])
                monitor.summary(include_ks=False)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monitor.close()
    summary = monitor.summary()
    assert summary["versions"]["1"]["requests"] == 2000
    labels = summary["labels"]
    # A label may beat its observation: it is held, and joined when the observation lands.
    assert labels["joined"] == 40 and labels["held_labels"] == 0

    tiny = Monitor(
        MonitoringConfig(
            max_queued_observations=3,
            rollback=RollbackPolicy(rules=(DriftRule(),), window=100, min_samples=10),
        ),
        VersionReference.loader(registry),
    )
    tiny._closed = True  # no drain thread: the queue fills
    for index in range(5):
        tiny.observe(f"x{index}", 1, features, probabilities, 0.001)
    assert tiny.dropped == 2


def test_a_version_without_a_registry_entry_is_skipped(registry):
    monitor = Monitor(MonitoringConfig(), VersionReference.loader(registry))
    monitor.ingest([])
    features = sample_rows(2, seed=3)
    monitor.observe("x", 42, features, softmax(features @ GOOD_WEIGHTS), 0.01)
    monitor.flush()
    assert monitor.summary()["versions"] == {}
    assert monitor.add_labels([LabelItem("x", 0)]) == {
        "joined": 0,
        "pending": 1,
        "duplicate": 0,
        "late": 0,
        "unknown": 0,
        "invalid": 0,
    }


# ----------------------------------------------------------------------------- the canary


def feed(monitor: Monitor, version: int, weights: np.ndarray, rows: int, seed: int) -> None:
    """``rows`` single-row predictions by a model with ``weights``, then their labels."""
    features = sample_rows(rows, seed)
    probabilities = softmax(features @ weights)
    labels = true_labels(features)
    monitor.ingest([])
    for index in range(rows):
        monitor.observe(
            f"{version}-{seed}-{index}",
            version,
            features[index : index + 1],
            probabilities[index : index + 1],
            0.002,
        )
    monitor.flush()
    monitor.add_labels([LabelItem(f"{version}-{seed}-{i}", int(labels[i])) for i in range(rows)])


def make_controller(registry: Registry, **overrides) -> tuple[CanaryController, RecordingRecorder]:
    recorder = RecordingRecorder()
    config = MonitoringConfig(window_size=500, min_samples=20)
    monitor = Monitor(config, VersionReference.loader(registry))
    settings = {
        "alias": "champion",
        "previous_alias": "champion-previous",
        "policy": RollbackPolicy(
            rules=(AccuracyDropRule(max_drop_points=10),), window=100, min_samples=40
        ),
        "recorder": recorder,
    }
    settings.update(overrides)
    return CanaryController(monitor, registry, **settings), recorder


def test_a_bad_canary_is_rolled_back_once_the_window_has_enough_labels(registry):
    controller, recorder = make_controller(registry)
    assert controller.evaluate() is None  # no canary
    state = controller.start(3, 0.2)
    assert state.routing() == (3, 0.2) and state.champion == 1
    assert recorder.gauge("trimtab_canary_share_ratio", version="3") == 0.2

    feed(controller.monitor, 1, GOOD_WEIGHTS, 200, seed=10)
    feed(controller.monitor, 3, -GOOD_WEIGHTS, 39, seed=11)
    assert controller.evaluate().action == "wait"  # 39 < min_samples
    assert controller.state.active
    feed(controller.monitor, 3, -GOOD_WEIGHTS, 1, seed=12)
    decision = controller.evaluate()
    assert decision.action == "rollback"
    state = controller.state
    assert state.status == "rolled_back" and state.routing() is None and state.share == 0.0
    assert "below the champion" in state.reasons[0]
    assert recorder.counter("trimtab_rollbacks_total", version="3") == 1
    assert recorder.gauge("trimtab_canary_share_ratio", version="3") == 0.0
    assert controller.evaluate() is None  # judged once
    assert registry.resolve("champion") == 1  # the champion never moved


def test_a_good_canary_holds_and_is_promoted(registry):
    controller, recorder = make_controller(registry)
    controller.start(2, 0.5)
    feed(controller.monitor, 1, GOOD_WEIGHTS, 150, seed=20)
    feed(controller.monitor, 2, GOOD_WEIGHTS * 1.1, 150, seed=21)
    assert controller.evaluate().action == "hold"
    assert controller.state.active
    state = controller.promote()
    assert state.status == "promoted"
    assert registry.resolve("champion") == 2 and registry.resolve("champion-previous") == 1
    assert recorder.counter("trimtab_promotions_total", version="2") == 1
    with pytest.raises(CanaryError, match="no canary is running"):
        controller.promote()


def test_auto_promotion_waits_for_a_full_window(registry):
    controller, _ = make_controller(registry, auto_promote=True)
    controller.start(2, 0.5)
    feed(controller.monitor, 1, GOOD_WEIGHTS, 150, seed=30)
    feed(controller.monitor, 2, GOOD_WEIGHTS * 1.1, 60, seed=31)
    assert controller.evaluate().action == "hold" and controller.state.active
    feed(controller.monitor, 2, GOOD_WEIGHTS * 1.1, 40, seed=32)
    controller.evaluate()
    assert controller.state.status == "promoted" and registry.resolve("champion") == 2


def test_canary_refusals_name_the_problem(registry):
    controller, _ = make_controller(registry)
    with pytest.raises(CanaryError, match="already the champion"):
        controller.start(1, 0.1)
    with pytest.raises(CanaryError, match="no version 9"):
        controller.start(9, 0.1)
    with pytest.raises(CanaryError, match="share must be in"):
        controller.start(2, 1.0)
    with pytest.raises(CanaryError, match="no canary is running"):
        controller.stop()
    controller.start(2, 0.1)
    assert controller.stop().status == "stopped"


def test_following_the_candidate_alias_never_restarts_a_judged_version(registry):
    controller, _ = make_controller(registry)
    registry.set_alias("candidate", 3)
    controller.follow_alias("candidate", 0.25)
    assert controller.state.routing() == (3, 0.25)
    controller.stop()
    controller.follow_alias("candidate", 0.25)
    assert not controller.state.active  # stopped by hand: judged
    registry.set_alias("candidate", 1)  # the champion itself: nothing to do
    controller.follow_alias("candidate", 0.25)
    assert not controller.state.active


def test_the_split_is_sticky_and_close_to_the_share() -> None:
    fractions = [canary_fraction(f"request-{index}", 7) for index in range(20_000)]
    assert fractions[:100] == [canary_fraction(f"request-{index}", 7) for index in range(100)]
    assert all(0.0 <= fraction < 1.0 for fraction in fractions)
    assert np.mean(np.array(fractions) < 0.1) == pytest.approx(0.1, abs=0.01)
    # Another canary version draws another subset.
    assert canary_fraction("request-1", 7) != canary_fraction("request-1", 8)


# ----------------------------------------------------------------------------- the service


def test_service_summary_has_roles_canary_and_gauges(registry):
    recorder = RecordingRecorder()
    config = MonitoringConfig(
        window_size=300,
        min_samples=50,
        canary_alias="candidate",
        canary_share=0.3,
        rollback=RollbackPolicy(rules=(AccuracyDropRule(10),), window=100, min_samples=50),
    )
    service = MonitoringService(config, registry.root, recorder=recorder, run_loop=False)
    registry.set_alias("candidate", 3)
    assert service.evaluate_now() == "wait"  # the alias started a canary of version 3
    assert service.routing() == {"version": 3, "share": 0.3}
    feed(service.monitor, 1, GOOD_WEIGHTS, 120, seed=40)
    feed(service.monitor, 3, -GOOD_WEIGHTS, 60, seed=41)
    assert service.evaluate_now() == "rollback"
    assert service.ingest([]) is None  # replicas learn: no canary

    summary = service.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["champion"] == 1
    assert summary["canary"]["status"] == "rolled_back"
    assert summary["versions"]["1"]["role"] == "champion"
    assert summary["versions"]["3"]["role"] is None
    assert summary["rollback_policy"]["window"] == 100
    accuracy = recorder.gauge("trimtab_online_accuracy_ratio", version="1")
    assert accuracy == pytest.approx(summary["versions"]["1"]["online"]["accuracy"])
    assert recorder.gauge("trimtab_feature_psi", version="1", feature="f0") is not None
    service.add_labels([LabelItem("nope", 0)])
    assert recorder.counter("trimtab_labels_total", outcome="pending") == 1
    service.close()


def test_the_evaluation_loop_runs_by_itself(registry):
    config = MonitoringConfig(
        evaluation_interval_s=0.05,
        canary_alias="candidate",
        rollback=RollbackPolicy(rules=(AccuracyDropRule(10),), window=100, min_samples=50),
    )
    registry.set_alias("candidate", 2)
    service = MonitoringService(config, registry.root)
    try:
        routing = wait_until(service.routing, 30, "the loop to start the candidate's canary")
        assert routing == {"version": 2, "share": 0.1}
    finally:
        service.close()
