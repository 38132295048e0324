"""The search space against a real in-memory Optuna study; Pareto front and winner selection."""

from __future__ import annotations

import optuna
import pytest

from policies.clipping import CLIP_CONFIGS, ZClipConfig
from policies.selection import (
    Candidate,
    CheapestWithin,
    KneePoint,
    PreferLowerValidationLoss,
    pareto_indices,
)
from search.space import ResolvedSpace, trial_train_config
from search.spec import FloatRange, SearchSpace
from train_loops.config import TrainConfig


def _space(**changes):
    return ResolvedSpace(
        SearchSpace(**changes),
        max_norm=FloatRange(low=0.5, high=4.0),
        clip_value=FloatRange(low=0.001, high=0.1),
    )


def test_each_trial_gets_only_its_methods_threshold_within_range():
    study = optuna.create_study(
        directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    space = _space()
    base = TrainConfig(dataset_dir="data")
    seen = set()
    for _ in range(60):
        trial = study.ask()
        space(trial)
        params = trial.params
        method = params["clip_method"]
        seen.add(method)
        names = {config.search_name for config in CLIP_CONFIGS.values()} - {None}
        expected = CLIP_CONFIGS[method].search_name
        assert names & set(params) == ({expected} if expected else set())
        if method == "norm":
            assert 0.5 <= params["max_norm"] <= 4.0
        config = trial_train_config(base, params)
        assert config.clipping.method == method
        if expected:
            assert config.clipping.tuned_value == params[expected]
        assert config.precision == params["precision"]
        assert config.learning_rate == params["learning_rate"]
        study.tell(trial, [0.0, 1.0])
    assert seen == set(CLIP_CONFIGS)


def test_restricted_fixed_and_extended_space():
    study = optuna.create_study(directions=["minimize", "minimize"])
    space = _space(
        clipping={"methods": ["zclip"]},
        precision=["bf16"],
        activation_checkpointing=[2],
        learning_rate=None,
        extra={"weight_decay": FloatRange(low=1e-5, high=1e-2)},
    )
    trial = study.ask()
    space(trial)
    base = TrainConfig(
        dataset_dir="d", learning_rate=0.002, clipping={"method": "zclip", "warmup_max_norm": 5.0}
    )
    config = trial_train_config(base, trial.params)
    assert config.clipping == ZClipConfig(
        z_threshold=trial.params["zclip_z_threshold"], warmup_max_norm=5.0
    )  # the base's other zclip settings stay
    assert config.precision == "bf16" and config.activation_checkpointing == 2
    assert config.learning_rate == 0.002  # fixed: not searched
    assert 1e-5 <= config.weight_decay <= 1e-2


def test_pareto_indices_by_hand():
    points = [(0.0, 5.0), (0.1, 2.0), (0.1, 3.0), (0.5, 1.0), (0.6, 1.0), (0.0, 5.0)]
    assert pareto_indices(points) == [0, 1, 3, 5]


def test_selection_policies():
    front = [
        Candidate("stable", 0.0, 10.0),
        Candidate("knee", 0.05, 2.0),
        Candidate("cheap", 0.6, 1.0),
    ]
    assert KneePoint()(front).key == "knee"
    assert CheapestWithin(0.1)(front).key == "knee"
    assert CheapestWithin(1.0)(front).key == "cheap"
    assert CheapestWithin(0.0)(front).key == "stable"
    with pytest.raises(ValueError, match="empty"):
        KneePoint()([])
    with pytest.raises(ValueError, match="tolerance"):
        CheapestWithin(-1)


def test_a_front_too_small_for_a_knee_gives_its_most_stable_point_and_its_size():
    two = [Candidate("cheap", 0.3, 1.0), Candidate("stable", 0.0, 5.0)]
    selection = KneePoint()(two)
    assert selection.key == "stable"
    assert selection.reason == (
        "most stable point of the (instability, cost) front: 2 points, too few for a knee"
    )
    assert KneePoint()([Candidate("only", 0.2, 3.0)]).reason.endswith(
        ": 1 point, too few for a knee"
    )


def test_lower_validation_loss_wins_within_tolerance_and_says_so():
    candidates = [
        Candidate("stable", 0.0, 10.0, val_loss=0.30),
        Candidate("knee", 0.05, 2.0, val_loss=0.40),
        Candidate("close", 0.08, 2.1, val_loss=0.10),  # dominated, but better and within slack
        Candidate("cheap", 0.6, 1.0, val_loss=0.05),
    ]
    policy = PreferLowerValidationLoss(KneePoint(), instability_tolerance=0.05, cost_tolerance=0.1)
    selection = policy(candidates)
    assert selection.key == "close"
    assert "lower validation loss (0.1 vs 0.4)" in selection.reason
    strict = PreferLowerValidationLoss(KneePoint(), instability_tolerance=0.0, cost_tolerance=0.0)
    assert strict(candidates).key == "knee"
