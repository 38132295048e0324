"""Studies on real Ray Tune + Optuna: front and winner vs the trial table, divergence, resume."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.spec import StudySpec
from search.study import Study

pytestmark = pytest.mark.slow

SHORT_TRAINING = {"epochs": 2, "report_every_steps": 10, "checkpoint_every_steps": 20}


def _load_optuna(directory, name):
    storage = JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _dominates(a, b):
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def test_eight_trial_study_front_and_winner_match_the_table(ray_session, storage):
    spec = StudySpec(
        name="digits8",
        storage=str(storage),
        training=SHORT_TRAINING,
        search={"num_trials": 8, "max_concurrent_trials": 2, "probe": {"steps": 20}},
        constraints={"min_val_accuracy": 0.85},
    )
    result = Study(spec).run()
    table = result.trials
    assert len(table) == 8 and (table["status"] == "TERMINATED").all()
    # feasibility, recomputed from the raw metrics
    feasible = table[
        (table["val_accuracy"] >= 0.85) & (table["diverged"] == 0) & (table["stalled"] == 0)
    ]
    assert set(feasible["trial_id"]) == set(table[table["feasible"]]["trial_id"])
    # the front, recomputed by brute force over the feasible rows
    points = {
        r.trial_id: (r.instability_score, r.cost_to_target_dollars) for r in feasible.itertuples()
    }
    front = {t for t, p in points.items() if not any(_dominates(q, p) for q in points.values())}
    assert front == set(result.pareto_front["trial_id"])
    assert result.winner is not None and result.winner["trial_id"] in front
    assert table["winner"].sum() == 1
    # Optuna's own view of the same study: every trial told, constraints recorded
    study = _load_optuna(result.directory, "digits8")
    assert study is not None and len(study.trials) == 8
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8 and all(t.constraints for t in complete)
    optuna_front = {t.user_attrs["tune_trial_id"] for t in study.best_trials}
    assert optuna_front == front
    # the winner's config rebuilds, the report exists
    assert result.winner_config.clipping.method == result.winner["param_clip_method"]
    report = result.directory / "report"
    for name in ("trials.parquet", "pareto.png", "report.html"):
        assert (report / name).stat().st_size > 0
    assert result.probe.max_norm_range[0] < result.probe.max_norm_range[1]
    assert "Gradient probe" in (report / "report.html").read_text()


def test_unstable_region_diverges_stops_early_and_is_infeasible(ray_session, storage):
    spec = StudySpec(
        name="unstable",
        storage=str(storage),
        training={**SHORT_TRAINING, "epochs": 4, "warmup_steps": 1},
        search={
            "num_trials": 3,
            "max_concurrent_trials": 2,
            "probe": {"steps": 10},
            "space": {
                "clipping": {"methods": ["none"]},
                "precision": ["fp16"],
                "learning_rate": {"low": 30.0, "high": 100.0},
            },
        },
    )
    result = Study(spec).run()
    table = result.trials
    assert (table["diverged"] == 1).all()
    assert (table["step"] < table["steps_planned"]).all()  # stopped early
    assert not table["feasible"].any() and result.winner is None
    study = _load_optuna(result.directory, "unstable")
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.constraints["not_diverged"] > 0  # infeasible for the sampler
        assert all(v == v for v in trial.values)  # told finite values, never NaN
    html = (result.directory / "report" / "report.html").read_text()
    assert "3 diverged and stopped early" in html
