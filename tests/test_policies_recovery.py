"""Recovery policies and the loop's recovery mechanics on small real models (no Ray)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from policies import (
    NoRecovery,
    RewindOnSpike,
    SkipSpikes,
    StabilityConfig,
    StabilityDetector,
    build_clip_policy,
    build_precision,
    build_recovery_policy,
)
from policies.clipping import NoClipConfig
from train_loops.spike_recovery import SpikeRecovery, TrainingParts

ALL_POLICIES = [NoRecovery(), SkipSpikes(), RewindOnSpike()]


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.policy)
def test_every_policy_builds_from_its_settings_and_is_frozen(policy) -> None:
    from policies.recovery import recovery_settings

    assert build_recovery_policy(recovery_settings(policy)) == policy
    assert build_recovery_policy(policy.policy) == policy
    with pytest.raises(AttributeError):
        policy.policy = "other"  # type: ignore[misc]


def test_policy_decisions() -> None:
    assert not NoRecovery().judges_steps and NoRecovery().snapshot_every == 0
    skip = SkipSpikes(max_in_a_row=3)
    assert skip.judges_steps and skip.snapshot_every == 0
    assert [skip.on_spike(skips_in_a_row=n) for n in range(3)] == ["skip", "skip", "give_up"]
    rewind = RewindOnSpike(every=20, max_rewinds=2, max_in_a_row=2)
    assert rewind.snapshot_every == 20
    assert rewind.on_spike(rewinds_so_far=0, updates_to_undo=5) == "rewind"
    assert rewind.on_spike(rewinds_so_far=1, updates_to_undo=5) == "rewind"
    assert rewind.on_spike(rewinds_so_far=2, updates_to_undo=5) == "give_up"
    # nothing applied since the snapshot: the rest of a bad block is skipped, not rewound
    assert rewind.on_spike(rewinds_so_far=2, updates_to_undo=0) == "skip"
    assert rewind.on_spike(skips_in_a_row=1, updates_to_undo=0) == "give_up"
    lowered = RewindOnSpike(lr_factor=0.5, lr_steps=3)
    assert [lowered.lr_multiplier(s) for s in range(5)] == [0.5, 0.5, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"policy": "rewnd"}, "recovery policy must be one of \\['none', 'skip', 'rewind'\\]"),
        ({"policy": "rewind", "every": 0}, "every must be >= 1, got 0"),
        ({"policy": "rewind", "lr_factor": 1.5}, "lr_factor must be in"),
        ({"policy": "rewind", "max_rewinds": -1}, "max_rewinds must be >= 0"),
        ({"policy": "skip", "evry": 3}, "unknown key 'evry' for recovery policy 'skip'"),
        ({"policy": "skip", "max_in_a_row": 0}, "max_in_a_row must be >= 1"),
    ],
)
def test_bad_settings_are_named(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_recovery_policy(values)


def _parts(seed: int = 0, precision: str = "fp32") -> TrainingParts:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return TrainingParts(
        model,
        optimizer,
        scheduler,
        build_precision(precision, "cpu"),
        build_clip_policy(NoClipConfig(), model),
        StabilityDetector(StabilityConfig(warmup_steps=5, window=10)),
    )


def _update(parts: TrainingParts, step: int) -> float:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
    y = torch.arange(16) % 3
    loss = nn.functional.cross_entropy(parts.model(x), y)
    loss.backward()
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    parts.detector.update(loss=loss.item(), grad_norm=1.0, clipped=False, skipped=False)
    return loss.item()


def _weights(parts: TrainingParts) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in parts.model.state_dict().items()}


def test_rewind_restores_the_snapshot_exactly_and_never_aliases_it() -> None:
    parts = _parts()
    recovery = SpikeRecovery(RewindOnSpike(every=4, lr_factor=0.5, lr_steps=2), parts)
    recovery.take_snapshot_if_due(0)
    for step in range(1, 9):
        _update(parts, step)
        recovery.after_update(step)
    assert recovery.snapshot_step == 8
    at_snapshot = _weights(parts)
    exp_avg = parts.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    lr_at_snapshot = parts.scheduler.get_last_lr()[0]
    for step in range(9, 11):
        _update(parts, step)
        recovery.after_update(step)
    recovery.severity = 2.0
    assert recovery.recover(10) == 8
    assert recovery.rewinds == 1 and recovery.steps_lost == 2 and recovery.skipped_batches == 3
    for name, tensor in _weights(parts).items():
        assert torch.equal(tensor, at_snapshot[name]), name
    assert torch.equal(parts.optimizer.state_dict()["state"][0]["exp_avg"], exp_avg)
    assert parts.detector.report().steps == 8
    assert parts.detector.report().recovered_spikes == 1  # counted although the detector rewound
    assert parts.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * lr_at_snapshot)
    # training on must not change the snapshot (the optimizer must not hold its tensors)
    for step in range(9, 12):
        _update(parts, step)
        recovery.after_update(step)
    assert parts.optimizer.param_groups[0]["lr"] == parts.scheduler.get_last_lr()[0]  # lr back
    snapshot_weights = recovery.snapshot["model"]
    for name, tensor in at_snapshot.items():
        assert torch.equal(snapshot_weights[name], tensor), name
    assert torch.equal(recovery.snapshot["optimizer"]["state"][0]["exp_avg"], exp_avg)


def test_recovery_state_survives_a_weights_only_checkpoint() -> None:
    parts = _parts()
    recovery = SpikeRecovery(RewindOnSpike(every=3), parts)
    recovery.take_snapshot_if_due(0)
    for step in range(1, 5):
        _update(parts, step)
        recovery.after_update(step)
    recovery.severity = 1.0
    recovery.recover(4)
    buffer = io.BytesIO()
    torch.save(recovery.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    again = SpikeRecovery(RewindOnSpike(every=3), _parts(seed=1))
    again.load_state_dict(loaded)
    assert (
        again.metrics()
        == recovery.metrics()
        == {
            "rewinds": 1.0,
            "skipped_batches": 2.0,
            "steps_lost": 1.0,
        }
    )
    assert again.snapshot_step == 3
    for name, tensor in recovery.snapshot["model"].items():
        assert torch.equal(again.snapshot["model"][name], tensor)


def test_a_spike_on_one_rank_is_a_spike_on_every_rank() -> None:
    """Two ranks simulated with a documented stand-in for ``all_reduce`` (mean of this rank's
    value and the other rank's): rank 0 sees a normal loss, rank 1 a spike; both refuse."""
    other_rank = {"loss": None, "severity": None}

    def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
        key = "loss" if tensor.dim() == 0 else "severity"
        return (tensor + other_rank[key]) / 2

    parts = _parts()
    for step in range(20):
        parts.detector.update(loss=1.0 + 0.01 * (step % 3), grad_norm=1.0, clipped=False,
                              skipped=False)  # fmt: skip
    recovery = SpikeRecovery(SkipSpikes(), parts, world_size=2, all_reduce_mean=all_reduce_mean)
    # the other rank's mean loss keeps the reduced loss normal, but its own verdict was a spike
    other_rank.update(loss=torch.tensor(1.0), severity=torch.tensor([3.0]))
    assert not recovery.allows_update(torch.tensor(1.01), torch.tensor(1.0))
    assert recovery.severity == pytest.approx(1.5)
    other_rank.update(loss=torch.tensor(1.0), severity=torch.tensor([0.0]))
    assert recovery.allows_update(torch.tensor(1.01), torch.tensor(1.0))


def test_spike_verdict_reads_without_recording() -> None:
    detector = StabilityDetector(StabilityConfig(warmup_steps=5, window=10))
    for step in range(10):
        detector.update(loss=1.0 + 0.01 * (step % 3), grad_norm=1.0, clipped=False, skipped=False)
    before = detector.state_dict()
    assert detector.spike_severity(1.01, 1.0) == 0.0
    assert detector.spike_severity(5.0, 1.0) > 0  # loss spike
    assert detector.spike_severity(1.0, 50.0) > 0  # gradient-norm spike
    assert detector.spike_severity(float("nan"), 1.0) == detector.config.max_severity
    assert detector.spike_severity(1.0, float("inf")) == detector.config.max_severity
    assert detector.spike_severity(1.0, None) == 0.0  # fp16: the scaler handles overflow
    assert detector.state_dict() == before


def test_recovery_is_a_dimension_of_the_study_space() -> None:
    """``search: {space: {recovery: [none, skip, rewind]}}`` against a real Optuna study; a
    trial that draws the policy ``training.recovery`` names keeps its settings."""
    import optuna

    from search.space import ResolvedSpace, describe_params, trial_train_config
    from search.spec import FloatRange, StudySpec

    spec = StudySpec.from_dict(
        {
            "training": {"recovery": {"policy": "rewind", "every": 25, "lr_factor": 0.5}},
            "search": {"space": {"recovery": ["none", "skip", "rewind"]}},
        }
    )
    assert StudySpec.from_dict({}).search.space.recovery is None  # not searched by default
    space = ResolvedSpace(
        spec.search.space, FloatRange(low=0.5, high=4), FloatRange(low=0.01, high=1)
    )
    base = spec.train_config("data")
    assert base.recovery == RewindOnSpike(every=25, lr_factor=0.5)
    study = optuna.create_study(
        directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    seen = {}
    for _ in range(30):
        trial = study.ask()
        space(trial)
        config = trial_train_config(base, trial.params)
        seen[trial.params["recovery"]] = config.recovery
        assert f"recovery={trial.params['recovery']}" in describe_params(trial.params)
        study.tell(trial, [0.0, 1.0])
    assert seen == {
        "none": NoRecovery(),
        "skip": SkipSpikes(),
        "rewind": RewindOnSpike(every=25, lr_factor=0.5),
    }
    from search.spec import SpecError

    with pytest.raises(SpecError, match="recovery"):
        StudySpec.from_dict({"search": {"space": {"recovery": ["rewnd"]}}})
    with pytest.raises(SpecError, match="every"):
        StudySpec.from_dict({"training": {"recovery": {"policy": "rewind", "every": 0}}})
