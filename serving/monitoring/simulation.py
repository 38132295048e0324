"""Canary traffic simulated at the monitor and policy level: no Ray, no HTTP, seconds per
hundreds of windows.

Each trial starts a fresh :class:`~serving.monitoring.monitor.Monitor`, sends rows drawn at
random (with replacement) from a pool of held-out rows to a champion and a candidate, joins
every label at once, and asks the rollback policy after every ``evaluate_every`` candidate rows
(as :class:`~serving.monitoring.canary.CanaryController` does on its evaluation timer) until the
candidate has served one full policy window. The rows, windows, statistics and rules are the
real ones; only the HTTP path and the Ray actors are left out.

Example::

    trial = simulate_canary_trial(
        MonitoringConfig(), references, champion_probabilities, candidate_probabilities,
        labels, rng=np.random.default_rng(0), pool_features=features,
    )
    trial.rolled_back, trial.candidate_rows
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.monitoring.config import MonitoringConfig
from serving.monitoring.monitor import Monitor
from serving.monitoring.records import LabelItem, Observation, VersionReference

CHAMPION_VERSION = 1
CANDIDATE_VERSION = 2


@dataclass(frozen=True)
class CanaryTrial:
    """One simulated canary: whether (and after how many labeled candidate rows) the policy
    rolled it back, and why."""

    rolled_back: bool
    candidate_rows: int
    """Labeled candidate rows at the rollback, or at the end of the window."""
    evaluations: int
    reasons: tuple[str, ...] = ()


def simulate_canary_trial(
    config: MonitoringConfig,
    references: Callable[[int], VersionReference],
    champion_probabilities: np.ndarray,
    candidate_probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    pool_features: np.ndarray,
    rng: np.random.Generator,
    share: float = 0.5,
    evaluate_every: int = 25,
) -> CanaryTrial:
    """One canary over one policy window of candidate traffic.

    Args:
        config: the monitoring configuration; its rollback policy judges the candidate.
        references: the :class:`VersionReference` of versions :data:`CHAMPION_VERSION` and
            :data:`CANDIDATE_VERSION`.
        champion_probabilities, candidate_probabilities: each model's ``(rows, classes)``
            outputs on the pool rows (computed once, so a trial costs no inference).
        labels: the pool rows' true classes.
        pool_features: the pool rows ``(rows, features)``, fed to the drift windows.
        rng: where the traffic is drawn from.
        share: the candidate's share of traffic. The champion's window is what the candidate
            is compared with, so a larger share (fewer champion rows) is the harder case.
        evaluate_every: candidate rows between two evaluations of the policy.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    if evaluate_every < 1:
        raise ValueError(f"evaluate_every must be >= 1, got {evaluate_every}")
    policy = config.rollback_policy
    monitor = Monitor(config, references)
    champion_rows = max(1, round(evaluate_every * (1.0 - share) / share))
    sources = {
        CHAMPION_VERSION: (champion_probabilities, champion_rows),
        CANDIDATE_VERSION: (candidate_probabilities, evaluate_every),
    }
    served = 0
    evaluations = 0
    while served < policy.window:
        observations, label_items = [], []
        for version, (probabilities, rows) in sources.items():
            # One request of ``rows`` rows per model and step, labeled row by row.
            drawn = rng.integers(0, len(labels), size=rows)
            request_id = f"{version}-{served}"
            observations.append(
                Observation(request_id, version, pool_features[drawn], probabilities[drawn], 0.002)
            )
            label_items += [
                LabelItem(request_id, int(label), row) for row, label in enumerate(labels[drawn])
            ]
        monitor.ingest(observations)
        monitor.add_labels(label_items)
        served += evaluate_every
        evaluations += 1
        decision = policy(
            monitor.window_stats(CANDIDATE_VERSION, policy.window),
            monitor.window_stats(CHAMPION_VERSION, policy.window),
        )
        if decision.rollback:
            return CanaryTrial(True, served, evaluations, decision.reasons)
    return CanaryTrial(False, served, evaluations)
