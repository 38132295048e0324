"""How much evidence monitoring's statistics need: false drift and false rollbacks on
undrifted traffic, measured by simulation (no Ray, no HTTP).

Part 1, **drift on undrifted data** ("how many rows are enough"): for the digits (1,797 rows,
64 features) and breast cancer (569 rows, 30 features) sets, both shipped with scikit-learn,
each repetition draws a reference of ``R`` rows and a window of ``n`` rows *with replacement
from the whole data set* (its empirical distribution stands in for the population, so the two
samples are undrifted by construction), builds the reference profile exactly as ``ship()`` does
and fills a :class:`~serving.monitoring.drift.DriftWindow`. ``R`` is the size of the
train+validation splits (what ``ship()`` profiles now) or of the test split (what it profiled
before). Per window size the table gives the mean PSI, the share of features at "warn"
(PSI >= 0.1), the share of windows with *any* feature at "warn" (the summary's status would not
be "ok") or at "alert" (PSI > 0.25), the share where the default ``DriftRule`` (PSI > 0.25 on
more than half of the features) would roll back, and the share with any KS flag at
``alpha = 0.01``, uncorrected and Holm-corrected.

Part 2, **false and true rollbacks** (:mod:`serving.monitoring.simulation`): a logistic
regression trained on the digits training split is the champion; candidates are the same model
(healthy: every rollback is false), the model with a share of its test-row predictions turned
wrong (5 and 10 points of accuracy lost), and one trained on shuffled labels. Each trial is one
policy window (500 candidate rows, judged every 25 rows from 100 on, labels joined at once)
of the held-out test rows drawn with replacement, under the default policy with the accuracy
rule at confidence 0.5 (the raw comparison) or at one-sided 95 % / 99 %.

Usage::

    .venv/bin/python bench/bench_monitoring_stats.py [--repeats 200] [--trials 200]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression

from policies.rollback import AccuracyDropRule, CalibrationRule, DriftRule, RollbackPolicy
from serving.monitoring.config import MonitoringConfig
from serving.monitoring.drift import DriftWindow, ReferenceBins, holm_adjusted
from serving.monitoring.monitor import VersionReference
from serving.monitoring.simulation import simulate_canary_trial
from serving.reference_profile import build_reference_profile, reference_profile_from_splits
from train_loops.data import DataSpec, prepare_dataset

WINDOW_SIZES = (50, 100, 200, 300, 500, 1000)
# train+validation and test rows of the 70/15/15 split (train_loops.data.stratified_split).
REFERENCE_ROWS = {
    "digits": {"train+validation": 1528, "test": 269},
    "breast cancer": {"train+validation": 483, "test": 86},
}


def null_drift_rates(features: np.ndarray, reference_rows: int, window: int, repeats: int, rng):
    names = [f"f{index}" for index in range(features.shape[1])]
    counts = dict.fromkeys(
        ("warn_share", "any_warn", "any_alert", "rule", "ks_raw", "ks_holm"), 0.0
    )
    psi_means = []
    for _ in range(repeats):
        reference = features[rng.integers(0, len(features), reference_rows)]
        profile = build_reference_profile(
            reference, np.zeros(reference_rows, dtype=np.int64), names, ["a", "b"], seed=0
        )
        drift = DriftWindow(
            ReferenceBins.from_profile(profile, names, 2), 2, window, keep_values=True
        )
        drift.add(features[rng.integers(0, len(features), window)], np.zeros(window, np.int64))
        psi = np.array(list(drift.feature_psi().values()))
        p_values = np.array([p for _, p in drift.ks_tests().values()])
        psi_means.append(psi.mean())
        counts["warn_share"] += (psi >= 0.1).mean()
        counts["any_warn"] += (psi >= 0.1).any()
        counts["any_alert"] += (psi > 0.25).any()
        counts["rule"] += (psi > 0.25).mean() > 0.5
        counts["ks_raw"] += (p_values < 0.01).any()
        counts["ks_holm"] += (holm_adjusted(p_values) < 0.01).any()
    return float(np.mean(psi_means)), {key: value / repeats for key, value in counts.items()}


def part_one(repeats: int) -> None:
    print(f"## Drift on undrifted data ({repeats} windows per row)\n")
    header = [
        "data set",
        "reference rows",
        "window rows",
        "mean PSI",
        "features warn",
        "windows any warn",
        "windows any alert",
        "DriftRule breach",
        "KS any flag (raw)",
        "KS any flag (Holm)",
    ]
    print("| " + " | ".join(header) + " |")
    print("|---|---|" + "---:|" * (len(header) - 2))
    rng = np.random.default_rng(0)
    for name, loader in (("digits", load_digits), ("breast cancer", load_breast_cancer)):
        features = loader().data.astype(np.float32)
        for reference_name, reference_rows in REFERENCE_ROWS[name].items():
            for window in WINDOW_SIZES:
                mean_psi, rates = null_drift_rates(features, reference_rows, window, repeats, rng)
                print(
                    f"| {name} | {reference_rows} ({reference_name}) | {window} | "
                    f"{mean_psi:.3f} | {rates['warn_share']:.1%} | {rates['any_warn']:.1%} | "
                    f"{rates['any_alert']:.1%} | {rates['rule']:.1%} | {rates['ks_raw']:.1%} | "
                    f"{rates['ks_holm']:.1%} |",
                    flush=True,
                )
    print()


def part_two(trials: int, scratch: Path) -> None:
    prepared = prepare_dataset(DataSpec(), scratch / "digits")
    train_features, train_labels = prepared.load("train")
    test_features, test_labels = prepared.load("test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        champion = LogisticRegression(max_iter=2000).fit(train_features, train_labels)
        shuffled_labels = np.random.default_rng(0).permutation(train_labels)
        shuffled = LogisticRegression(max_iter=2000).fit(train_features, shuffled_labels)
    profile = reference_profile_from_splits(prepared, champion.predict)

    def references(version: int) -> VersionReference:
        return VersionReference(version, prepared.feature_names, prepared.class_names, profile)

    base = champion.predict_proba(test_features)
    candidates = {"healthy (same model)": base}
    for points in (5, 10):
        corrupted = base.copy()
        rows = np.random.default_rng(points).permutation(len(base))[
            : round(len(base) * points / 100)
        ]
        corrupted[rows] = np.roll(corrupted[rows], 1, axis=1)  # arg-max moves to a wrong class
        candidates[f"{points} % of rows made wrong"] = corrupted
    candidates["shuffled labels"] = shuffled.predict_proba(test_features)
    accuracy = {name: float(np.mean(p.argmax(1) == test_labels)) for name, p in candidates.items()}

    print(f"## Rollbacks over one policy window ({trials} trials per row)\n")
    print(
        f"Champion: logistic regression, test accuracy {accuracy['healthy (same model)']:.1%}."
        " Default policy: accuracy drop > 5 points, ECE > 0.15, drift; window 500, judged "
        "from 100 labeled rows every 25.\n"
    )
    header = [
        "candidate",
        "candidate accuracy",
        "share",
        "accuracy rule",
        "rolled back",
        "median rows to rollback",
        "seconds",
    ]
    print("| " + " | ".join(header) + " |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, probabilities in candidates.items():
        for share in (0.5, 0.1):
            for confidence in (0.5, 0.95, 0.99):
                config = MonitoringConfig(
                    rollback=RollbackPolicy(
                        rules=(
                            AccuracyDropRule(5.0, confidence=confidence),
                            CalibrationRule(0.15),
                            DriftRule(),
                        ),
                        window=500,
                        min_samples=100,
                    )
                )
                rng = np.random.default_rng(1)
                start = time.perf_counter()
                results = [
                    simulate_canary_trial(
                        config,
                        references,
                        base,
                        probabilities,
                        test_labels,
                        pool_features=test_features,
                        rng=rng,
                        share=share,
                    )
                    for _ in range(trials)
                ]
                seconds = time.perf_counter() - start
                rolled = [trial.candidate_rows for trial in results if trial.rolled_back]
                rule = "raw difference" if confidence == 0.5 else f"{confidence:.0%} bound"
                median = f"{np.median(rolled):.0f}" if rolled else "-"
                print(
                    f"| {name} | {accuracy[name]:.1%} | {share:.0%} | {rule} | "
                    f"{len(rolled) / trials:.1%} | {median} | {seconds:.1f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="windows per drift row")
    parser.add_argument("--trials", type=int, default=200, help="canary trials per row")
    parser.add_argument("--part", choices=("drift", "rollback", "both"), default="both")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    import tempfile

    if args.part in ("drift", "both"):
        part_one(args.repeats)
    if args.part in ("rollback", "both"):
        with tempfile.TemporaryDirectory(prefix="bench-monitoring-stats-") as scratch:
            part_two(args.trials, Path(scratch))


if __name__ == "__main__":
    main()
