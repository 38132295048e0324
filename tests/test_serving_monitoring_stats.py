"""The statistics of online monitoring: PSI, KS, the label join and the windowed metrics,
checked against scikit-learn and scipy and by property tests. No Ray, no HTTP."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

import serving.monitoring.drift
from serving.monitoring.drift import DriftWindow, ReferenceBins, population_stability_index
from serving.monitoring.labels import PredictionStore
from serving.monitoring.metrics import (
    LabeledRow,
    LabeledWindow,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
)
from serving.registry import build_reference_profile

FAST = settings(max_examples=40, deadline=None)
counts_strategy = st.lists(st.integers(0, 1000), min_size=1, max_size=20)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reference_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE written out bin by bin, independently of the implementation's running sums."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if low == 0.0:
            inside |= confidence == 0.0
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            total += inside.mean() * gap
    return total


def test_drift_module_examples_run() -> None:
    assert doctest.testmod(serving.monitoring.drift).failed == 0


# ----------------------------------------------------------------------------- PSI properties


@FAST
@given(counts_strategy)
def test_psi_of_identical_counts_is_zero(counts: list[int]) -> None:
    assert population_stability_index(counts, counts) == 0.0


@FAST
@given(st.data())
def test_psi_is_never_negative(data) -> None:
    expected = data.draw(counts_strategy)
    actual = data.draw(
        st.lists(st.integers(0, 1000), min_size=len(expected), max_size=len(expected))
    )
    assert population_stability_index(expected, actual) >= 0.0


def test_psi_thresholds_separate_small_and_large_shifts() -> None:
    reference = [100] * 10
    assert population_stability_index(reference, [105, 95] * 5) < 0.1
    assert population_stability_index(reference, [300] + [0] * 8 + [700]) > 0.25
    # An empty bin stays finite thanks to the half pseudo-count.
    assert np.isfinite(population_stability_index([0, 100], [100, 0]))
    with pytest.raises(ValueError, match="same bins"):
        population_stability_index([1, 2], [1, 2, 3])


# ----------------------------------------------------------------------------- drift window


def make_profile(rows: int = 2000, features: int = 4, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(rows, features)).astype(np.float32)
    predicted = rng.integers(0, classes, size=rows)
    names = [f"f{index}" for index in range(features)]
    profile = build_reference_profile(
        reference, predicted, names, [str(c) for c in range(classes)], sample_size=500
    )
    return profile, names, reference


def test_window_counts_stay_equal_to_a_recount_as_rows_come_and_go() -> None:
    profile, names, _ = make_profile()
    bins = ReferenceBins.from_profile(profile, names, 3)
    window = DriftWindow(bins, 3, size=50, keep_values=True)
    rng = np.random.default_rng(1)
    seen_features, seen_classes = [], []
    for batch in [1, 7, 30, 49, 50, 3, 120, 2]:
        features = rng.normal(size=(batch, len(names))).astype(np.float32)
        classes = rng.integers(0, 3, size=batch)
        window.add(features, classes)
        seen_features.append(features)
        seen_classes.append(classes)
        kept = np.concatenate(seen_features)[-50:]
        kept_classes = np.concatenate(seen_classes)[-50:]
        assert window.rows == len(kept)
        np.testing.assert_array_equal(window.class_counts, np.bincount(kept_classes, minlength=3))
        for column, name in enumerate(names):
            cuts = bins.cut_points[column]
            recount = np.bincount(
                np.searchsorted(cuts, kept[:, column], side="left"), minlength=len(cuts) + 1
            )
            assert window.feature_psi()[name] == population_stability_index(
                bins.expected_counts[column], recount
            )
            statistic, p_value = window.ks_tests()[name]
            expected = stats.ks_2samp(kept[:, column], profile["features"][name]["sample"])
            assert statistic == pytest.approx(expected.statistic)
            assert p_value == pytest.approx(expected.pvalue)


def test_reference_rows_score_low_and_a_shift_scores_high() -> None:
    profile, names, reference = make_profile()
    bins = ReferenceBins.from_profile(profile, names, 3)
    window = DriftWindow(bins, 3, size=1000, keep_values=False)
    window.add(reference[:1000], np.zeros(1000, dtype=np.int64))
    report = window.report(psi_warn=0.1, psi_alert=0.25, ks_alpha=0.01, min_rows=100)
    assert max(report.feature_psi.values()) < 0.1
    assert report.ks is None  # raw values not kept
    assert report.to_dict()["status"] == "ok"
    # Everything predicted as class 0 is a drift of the predicted-class distribution.
    assert report.prediction_psi > 0.25 and report.to_dict()["prediction_status"] == "alert"

    window.add(-reference[:1000] + 3.0, np.zeros(1000, dtype=np.int64))
    shifted = window.report(psi_warn=0.1, psi_alert=0.25, ks_alpha=0.01, min_rows=100)
    assert min(shifted.feature_psi.values()) > 0.25
    assert shifted.drifted_share == 1.0
    assert shifted.to_dict()["drifted_features"] == names


def test_a_profile_that_disagrees_is_refused() -> None:
    profile, names, _ = make_profile()
    with pytest.raises(ValueError, match="no feature 'f9'"):
        ReferenceBins.from_profile(profile, [*names, "f9"], 3)
    with pytest.raises(ValueError, match="3 predicted classes; the model has 4"):
        ReferenceBins.from_profile(profile, names, 4)


# ----------------------------------------------------------------------------- ECE


@FAST
@given(
    st.integers(1, 300),
    st.integers(2, 12),
    st.floats(0.01, 20.0),
    st.integers(0, 2**32 - 1),
)
def test_ece_is_between_zero_and_one(rows: int, classes: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probabilities = softmax(rng.normal(scale=scale, size=(rows, classes)))
    labels = rng.integers(0, classes, size=rows)
    ece = expected_calibration_error(probabilities, labels)
    assert 0.0 <= ece <= 1.0
    assert ece == pytest.approx(reference_ece(probabilities, labels), abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.floats(0.5, 2.5), st.integers(0, 2**32 - 1))
def test_over_confident_logits_have_at_least_twice_the_ece(scale: float, seed: int) -> None:
    # Labels drawn from softmax(logits): calibrated by construction.
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(5000, 10))
    calibrated = softmax(logits)
    labels = (rng.random((5000, 1)) > calibrated.cumsum(axis=1)).sum(axis=1)
    over_confident = softmax(3.0 * logits)
    assert expected_calibration_error(over_confident, labels) >= 2 * expected_calibration_error(
        calibrated, labels
    )


def test_calibration_bins_are_right_closed() -> None:
    edges = np.linspace(0, 1, 16)
    np.testing.assert_array_equal(
        calibration_bins(np.array([0.0, edges[1], np.nextafter(edges[1], 1), 1.0])), [0, 0, 1, 14]
    )


# ----------------------------------------------------------------------------- windowed metrics


def sklearn_metrics(labels, predicted) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="macro", zero_division=0
    )
    return {
        "accuracy": accuracy_score(labels, predicted),
        "macro_precision": precision,
        "macro_recall": recall,
        "macro_f1": f1,
    }


@FAST
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.floats(0.2, 1.0)), max_size=80),
    st.integers(1, 30),
)
def test_sliding_window_metrics_equal_scikit_learn_on_the_window(rows, size) -> None:
    window = LabeledWindow(num_classes=5, size=size)
    for label, predicted, confidence in rows:
        window.add(LabeledRow(label, predicted, confidence, slice_keys=("all",)))
    kept = rows[-size:]
    metrics = window.metrics()
    assert metrics["labeled"] == len(kept)
    if not kept:
        assert metrics["accuracy"] is None and metrics["ece"] is None
        assert window.slice_metrics() == {}
        return
    labels = np.array([row[0] for row in kept])
    predicted = np.array([row[1] for row in kept])
    expected = sklearn_metrics(labels, predicted)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name
    confidences = np.array([row[2] for row in kept])
    correct = labels == predicted
    bins = calibration_bins(confidences)
    ece = sum(
        abs(correct[bins == b].sum() - confidences[bins == b].sum()) for b in range(15)
    ) / len(kept)
    assert metrics["ece"] == pytest.approx(ece, abs=1e-9)
    assert window.slice_metrics()["all"] == metrics
    assert window.tail_metrics(3)["labeled"] == min(3, len(kept))


def test_classification_metrics_of_nothing_are_none() -> None:
    assert classification_metrics(np.zeros((3, 3), dtype=np.int64))["accuracy"] is None


# ----------------------------------------------------------------------------- label store


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_labels_join_once_and_late_or_unknown_ids_are_told_apart() -> None:
    clock = FakeClock()
    store = PredictionStore(retention_s=10.0, max_predictions=3, clock=clock)
    store.add("a", 0, version=1, predicted=2, confidence=0.9)
    store.add("a", 1, version=1, predicted=0, confidence=0.6)
    outcome, pending = store.claim("a", 1)
    assert outcome == "joined" and pending.predicted == 0 and pending.confidence == 0.6
    assert store.claim("a", 1) == ("duplicate", None)
    assert store.claim("zzz")[0] == "unknown"

    clock.now = 11.0  # past the retention
    assert store.claim("a", 0)[0] == "late"
    assert len(store) == 0

    for name in "bcde":  # four rows into a store of three: "b" is pushed out
        store.add(name, 0, version=2, predicted=1, confidence=0.5)
    assert len(store) == 3
    assert store.claim("b")[0] == "late"
    assert store.claim("e")[0] == "joined"

    store.add("e", 0, version=2, predicted=1, confidence=0.5)  # a retry replaces
    assert store.replaced == 1
    assert store.claim("e")[0] == "joined"
