"""The statistics of online monitoring: PSI, KS, the label join and the windowed metrics,
checked against scikit-learn and scipy and by property tests. No Ray, no HTTP."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

import serving.monitoring.drift
import serving.monitoring.multiple_testing
from policies.rollback import DriftRule, RollbackPolicy
from serving.monitoring.config import DEFAULT_DRIFT_MIN_ROWS, MonitoringConfig
from serving.monitoring.drift import (
    DriftWindow,
    ReferenceBins,
    adjust_p_values,
    holm_adjusted,
    population_stability_index,
)
from serving.monitoring.labels import PredictionStore
from serving.monitoring.metrics import (
    LabeledRow,
    LabeledWindow,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
)
from serving.monitoring.monitor import Monitor, Observation, VersionReference
from serving.reference_profile import build_reference_profile, reference_profile_from_splits
from train_loops.data import DataSpec, PreparedDataset, prepare_dataset

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
    assert doctest.testmod(serving.monitoring.multiple_testing).failed == 0


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
            assert window.feature_psi()[name] == pytest.approx(
                population_stability_index(bins.expected_counts[column], recount),
                rel=1e-12,
                abs=1e-15,
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


# ----------------------------------------------------------------------------- multiple testing


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=70))
def test_holm_rejects_what_the_step_down_procedure_rejects(p_values: list[float]) -> None:
    adjusted = holm_adjusted(p_values)
    assert adjusted.shape == (len(p_values),)
    assert ((adjusted >= np.asarray(p_values)) & (adjusted <= 1.0)).all()
    for alpha in (0.001, 0.01, 0.05, 0.2):
        # Holm (1979): walk the sorted p-values, reject while p_(k) <= alpha / (m - k).
        rejected = set()
        for rank, index in enumerate(np.argsort(p_values, kind="stable")):
            if p_values[index] > alpha / (len(p_values) - rank):
                break
            rejected.add(int(index))
        assert {i for i, p in enumerate(adjusted) if p <= alpha} == rejected


def test_benjamini_hochberg_is_scipys_and_unknown_corrections_are_refused() -> None:
    p_values = np.random.default_rng(0).uniform(size=30) ** 3
    np.testing.assert_array_equal(
        adjust_p_values(p_values, "bh"), stats.false_discovery_control(p_values, method="bh")
    )
    np.testing.assert_array_equal(adjust_p_values(p_values, "holm"), holm_adjusted(p_values))
    with pytest.raises(ValueError, match="correction must be one of"):
        adjust_p_values(p_values, "bonferroni-ish")
    with pytest.raises(ValueError, match="ks_correction must be 'holm' or 'bh'"):
        MonitoringConfig(ks_correction="none")


def test_corrected_ks_keeps_undrifted_windows_quiet_across_64_features() -> None:
    profile, names, _ = make_profile(rows=2000, features=64, seed=3)
    bins = ReferenceBins.from_profile(profile, names, 3)
    rng = np.random.default_rng(4)
    uncorrected = corrected = 0
    windows = 40
    for _ in range(windows):
        window = DriftWindow(bins, 3, size=200, keep_values=True)
        window.add(rng.normal(size=(200, 64)).astype(np.float32), np.zeros(200, dtype=np.int64))
        report = window.report(psi_warn=0.1, psi_alert=0.25, ks_alpha=0.01, min_rows=200)
        uncorrected += any(p_value < 0.01 for _, p_value in report.ks.values())
        corrected += bool(report.to_dict()["ks"]["drifted_features"])
    # 64 tests at 1 % flag some feature in ~47 % of undrifted windows; Holm in <= 1 %.
    assert uncorrected >= windows // 4
    assert corrected <= 1
    # A real shift of one feature is still found after the correction.
    window.add(rng.normal(loc=0.6, size=(200, 64)).astype(np.float32), np.zeros(200, np.int64))
    shifted = window.report(psi_warn=0.1, psi_alert=0.25, ks_alpha=0.01, min_rows=200).to_dict()
    assert shifted["ks"]["correction"] == "holm" and shifted["ks"]["drifted_share"] > 0.9
    first = shifted["ks"]["features"]["f0"]
    assert first["adjusted_p_value"] >= first["p_value"]


def test_no_drift_level_or_status_before_the_window_has_enough_rows() -> None:
    profile, names, reference = make_profile()
    bins = ReferenceBins.from_profile(profile, names, 3)
    window = DriftWindow(bins, 3, size=1000, keep_values=True)
    window.add(-reference[:50] + 3.0, np.zeros(50, dtype=np.int64))  # drifted, but 50 rows
    early = window.report(psi_warn=0.1, psi_alert=0.25, ks_alpha=0.01, min_rows=300).to_dict()
    assert early["enough_rows"] is False and early["min_rows"] == 300
    assert early["status"] is None and early["prediction_status"] is None
    assert early["drifted_features"] == [] and early["drifted_share"] is None
    assert early["warn_features"] == []
    assert min(early["feature_psi"].values()) > 0.25  # the figures are shown, not judged
    assert early["ks"]["drifted_share"] == 1.0  # KS accounts for the sample size itself
    window.add(-reference[:250] + 3.0, np.zeros(250, dtype=np.int64))
    late = window.report(psi_warn=0.1, psi_alert=0.25, ks_alpha=0.01, min_rows=300).to_dict()
    assert late["enough_rows"] and late["status"] == "alert" and late["drifted_share"] == 1.0


def test_drift_min_rows_defaults_to_the_measured_size_and_is_checked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert MonitoringConfig().drift_min_rows == DEFAULT_DRIFT_MIN_ROWS
    small = RollbackPolicy((DriftRule(),), window=400)
    assert MonitoringConfig(window_size=400, drift_min_rows=400, rollback=small).drift_min_rows
    with pytest.raises(ValueError, match=r"drift_min_rows \(500\) cannot exceed window_size"):
        MonitoringConfig(window_size=400, drift_min_rows=500, rollback=small)
    with caplog.at_level("WARNING", logger="serving.monitoring.config"):
        MonitoringConfig(
            window_size=50, min_samples=10, rollback=RollbackPolicy((DriftRule(),), 50, 10)
        )
    assert f"window_size 50 cannot hold the {DEFAULT_DRIFT_MIN_ROWS} rows" in caplog.text


# ----------------------------------------------------------------------------- outside data


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """scikit-learn's breast cancer set (569 rows, 30 features; shipped, no download), split
    70/15/15 by the same code as any user's Parquet file."""
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [name.replace(" ", "_") for name in frame.columns]
    directory = tmp_path_factory.mktemp("breast-cancer")
    pq.write_table(pa.Table.from_pandas(frame), directory / "data.parquet")
    return prepare_dataset(
        DataSpec(source=str(directory / "data.parquet"), label_column="target"),
        directory / "prepared",
    )


def _drift_of(profile: dict, prepared: PreparedDataset, features: np.ndarray, model) -> dict:
    reference = VersionReference(1, prepared.feature_names, prepared.class_names, profile)
    monitor = Monitor(MonitoringConfig(), lambda version: reference)
    monitor.ingest([Observation("r", 1, features, model.predict_proba(features), 0.001)])
    return monitor.summary()["versions"]["1"]["drift"]


def test_held_out_rows_of_a_small_outside_data_set_are_not_reported_as_drift(
    breast_cancer: PreparedDataset,
) -> None:
    train_features, train_labels = breast_cancer.load("train")
    test_features, _ = breast_cancer.load("test")
    assert (len(train_features), len(test_features)) == (397, 86)
    model = LogisticRegression(max_iter=5000).fit(train_features, train_labels)
    # The profile ship() builds: every training and validation row (483).
    profile = reference_profile_from_splits(breast_cancer, model.predict)
    assert profile["rows"] == 397 + 86 and profile["source"] == "train+validation"

    held_out = _drift_of(profile, breast_cancer, test_features, model)
    assert held_out["rows"] == 86 and not held_out["enough_rows"]
    assert held_out["status"] is None and held_out["drifted_features"] == []
    assert held_out["warn_features"] == []
    assert held_out["ks"]["drifted_features"] == []  # Holm-corrected, valid at 86 rows
    seen = _drift_of(profile, breast_cancer, train_features, model)
    assert seen["enough_rows"] and seen["status"] == "ok"
    assert max(seen["feature_psi"].values()) < 0.05 and seen["ks"]["drifted_features"] == []

    # What was reported before: a profile of the 86 test rows calls the training rows drifted.
    small = build_reference_profile(
        test_features,
        model.predict(test_features),
        list(breast_cancer.feature_names),
        list(breast_cancer.class_names),
    )
    against_small = _drift_of(small, breast_cancer, train_features, model)
    assert against_small["status"] == "alert" and against_small["drifted_features"]

    # And a real shift of the held-out rows is still found on as few rows.
    shifted = test_features.copy()
    shifted[:, :5] *= 1.5
    assert len(_drift_of(profile, breast_cancer, shifted, model)["ks"]["drifted_features"]) >= 3
