"""The default rollback policy against simulated canary traffic (real Monitor, windows and
rules; no Ray): a healthy canary is almost never rolled back, a broken one at once."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from policies.rollback import AccuracyDropRule, CalibrationRule, DriftRule, RollbackPolicy
from serving.monitoring.config import MonitoringConfig
from serving.monitoring.monitor import VersionReference
from serving.monitoring.simulation import simulate_canary_trial
from serving.reference_profile import reference_profile_from_splits
from train_loops.data import PreparedDataset

TRIALS = 200


@pytest.fixture(scope="module")
def models(digits: PreparedDataset) -> dict[str, LogisticRegression]:
    features, labels = digits.load("train")
    shuffled = np.random.default_rng(0).permutation(labels)
    return {
        "champion": LogisticRegression(max_iter=2000).fit(features, labels),
        "shuffled": LogisticRegression(max_iter=2000).fit(features, shuffled),
    }


def run_trials(digits, champion, candidate, config: MonitoringConfig, trials: int, seed: int):
    profiles = {
        1: reference_profile_from_splits(digits, champion.predict),
        2: reference_profile_from_splits(digits, candidate.predict),
    }

    def references(version: int) -> VersionReference:
        return VersionReference(
            version, digits.feature_names, digits.class_names, profiles[version]
        )

    # Traffic: the held-out test rows, which neither model nor profile has seen.
    features, labels = digits.load("test")
    champion_probabilities = champion.predict_proba(features)
    candidate_probabilities = candidate.predict_proba(features)
    rng = np.random.default_rng(seed)
    return [
        simulate_canary_trial(
            config,
            references,
            champion_probabilities,
            candidate_probabilities,
            labels,
            pool_features=features,
            rng=rng,
        )
        for _ in range(trials)
    ]


def test_a_healthy_canary_is_rolled_back_in_at_most_one_percent_of_windows(
    digits: PreparedDataset, models: dict[str, LogisticRegression]
) -> None:
    # The same model as the champion, registered again: any rollback is a false one. Each trial
    # is one window (500 candidate rows at a 50 % share), judged every 25 rows from 100 on.
    champion = models["champion"]
    config = MonitoringConfig()  # the default policy: accuracy (95 % bound), ECE, drift
    trials = run_trials(digits, champion, champion, config, TRIALS, seed=1)
    assert all(trial.evaluations == 20 for trial in trials if not trial.rolled_back)
    false_rollbacks = sum(trial.rolled_back for trial in trials)
    assert false_rollbacks <= TRIALS // 100, [t.reasons for t in trials if t.rolled_back]

    # On the same traffic the raw comparison (confidence 0.5) rolls the healthy canary back.
    raw = MonitoringConfig(
        rollback=RollbackPolicy(
            rules=(AccuracyDropRule(5.0, confidence=0.5), CalibrationRule(0.15), DriftRule()),
            window=500,
            min_samples=100,
        )
    )
    raw_trials = run_trials(digits, champion, champion, raw, TRIALS, seed=1)
    assert sum(trial.rolled_back for trial in raw_trials) > max(false_rollbacks, 2)


def test_a_shuffled_label_canary_is_rolled_back_within_one_window(
    digits: PreparedDataset, models: dict[str, LogisticRegression]
) -> None:
    config = MonitoringConfig()
    trials = run_trials(digits, models["champion"], models["shuffled"], config, 20, seed=2)
    for trial in trials:
        assert trial.rolled_back
        # At the first evaluation with min_samples labeled rows: well inside one window.
        assert trial.candidate_rows == config.rollback_policy.min_samples
        assert "below the champion" in trial.reasons[0]


def test_simulation_arguments_are_checked(digits, models) -> None:
    with pytest.raises(ValueError, match="share must be in"):
        simulate_canary_trial(
            MonitoringConfig(),
            lambda version: None,
            np.zeros((1, 10)),
            np.zeros((1, 10)),
            np.zeros(1),
            pool_features=np.zeros((1, 64)),
            rng=np.random.default_rng(0),
            share=1.0,
        )
