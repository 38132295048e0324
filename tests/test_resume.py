"""Resume planning from a real Optuna journal (no Ray): what a new attempt replays, resumes
and replaces, which checkpoint it trusts, and one driver per study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from search.resume import (
    StudyBusyError,
    TrialPlan,
    latest_checkpoint,
    reconcile,
    study_lock,
)
from train_loops.checkpoint import save_checkpoint
from train_loops.config import TrainConfig

OBJECTIVES = ["instability_score", "cost_dollars"]


def _storage(directory: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))


def _checkpoint(trial_dir: Path, index: int, step: int) -> Path:
    return save_checkpoint(
        trial_dir / f"checkpoint_{index:06d}", {"step": step}, TrainConfig(dataset_dir="data")
    )


def _ran(trial: optuna.Trial, attempt: int, trial_id: str) -> None:
    trial.set_user_attr("tune_attempt", attempt)
    trial.set_user_attr("tune_trial_id", trial_id)
    trial.set_user_attr("tune_trial_ids", [trial_id])
    trial.set_user_attr("train_run", f"train-{trial_id}")


def test_reconcile_replays_complete_resumes_checkpointed_and_fails_the_rest(tmp_path):
    storage = _storage(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage, directions=["minimize"] * 2)
    attempt_dir = tmp_path / "tune" / "attempt-1"
    done = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    _ran(done, 1, "aaa")
    done.set_user_attr("result", {"instability_score": 0.5, "cost_dollars": 2.0, "val_loss": 1.0})
    final = _checkpoint(attempt_dir / "trial_aaa", 3, 24)
    study.tell(done, [0.5, 2.0])
    running = study.ask()
    _ran(running, 1, "bbb")
    _checkpoint(attempt_dir / "trial_bbb", 0, 4)
    newest = _checkpoint(attempt_dir / "trial_bbb", 1, 8)
    lost = study.ask()  # killed before its first checkpoint
    _ran(lost, 1, "ccc")
    never = study.ask()  # killed before Tune started it: no attributes at all

    attempt = reconcile(storage, "s", tmp_path, num_trials=5, objectives=OBJECTIVES)

    assert attempt.number == 2 and attempt.num_samples == 5
    resume, replay = attempt.plans
    assert resume == TrialPlan("resume", running.number, {}, checkpoint=str(newest), runs=["bbb"])
    assert replay.kind == "replay" and replay.number == done.number
    assert replay.params == done.params and replay.checkpoint == str(final)
    assert replay.result == {"instability_score": 0.5, "cost_dollars": 2.0, "val_loss": 1.0}
    states = {t.number: t.state for t in study.get_trials()}
    assert states[lost.number] == states[never.number] == TrialState.FAIL
    assert states[running.number] == TrialState.RUNNING  # continued by the new attempt


def test_a_trial_killed_again_before_checkpointing_resumes_from_where_it_resumed(tmp_path):
    storage = _storage(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage, directions=["minimize"] * 2)
    earlier = _checkpoint(tmp_path / "tune" / "attempt-1" / "trial_aaa", 2, 12)
    trial = study.ask()
    _ran(trial, 2, "bbb")  # attempt 2 resumed it as bbb, which died before a checkpoint
    trial.set_user_attr("resumed_from", str(earlier))

    (plan,) = reconcile(storage, "s", tmp_path, num_trials=1, objectives=OBJECTIVES).plans

    assert plan.kind == "resume" and plan.checkpoint == str(earlier)


def test_a_completed_trial_without_a_recorded_result_replays_its_objective_values(tmp_path):
    storage = _storage(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage, directions=["minimize"] * 2)
    study.tell(study.ask(), [0.25, 3.0])

    (plan,) = reconcile(storage, "s", tmp_path, num_trials=1, objectives=OBJECTIVES).plans

    assert plan.result == {"instability_score": 0.25, "cost_dollars": 3.0}
    assert plan.checkpoint is None


def test_a_study_never_run_plans_only_new_trials(tmp_path):
    attempt = reconcile(_storage(tmp_path), "s", tmp_path, num_trials=3, objectives=OBJECTIVES)
    assert (attempt.number, attempt.plans, attempt.num_samples) == (1, [], 3)
    assert attempt.path == tmp_path / "tune" / "attempt-1"


def test_latest_checkpoint_skips_an_incomplete_newest_copy(tmp_path):
    good = _checkpoint(tmp_path, 0, 4)
    torn = _checkpoint(tmp_path, 1, 8)
    (torn / "state.pt").write_bytes((torn / "state.pt").read_bytes()[:20])  # killed mid-copy
    assert latest_checkpoint(tmp_path) == good
    assert latest_checkpoint(tmp_path / "missing") is None


def test_one_driver_per_study(tmp_path):
    busy = pytest.raises(StudyBusyError, match="is being run by pid")
    with study_lock(tmp_path), busy, study_lock(tmp_path):
        pass
    with study_lock(tmp_path):  # released when the first driver ended
        pass
