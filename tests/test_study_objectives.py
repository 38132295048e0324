"""Studies on real Ray Tune + Optuna: what Optuna is told about trials that raise, and the
calibrated cost the trials are charged."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.spec import StudySpec
from search.study import Study

pytestmark = pytest.mark.slow

ONE_SETTING = {
    "precision": ["fp32"],
    "activation_checkpointing": [0],
    "optimizer": ["adamw"],
    "warmup_steps": [20],
    "clipping": {"methods": ["norm"]},
}


def test_trial_that_raises_after_reporting_is_infeasible_in_the_journal(ray_session, storage):
    spec = StudySpec(
        name="errored",
        storage=str(storage),
        # raises on its 45th training forward: after the reports at steps 10..40
        model={"name": "tests.plugin_models:failing_mlp", "options": {"fail_after": 45}},
        training={"epochs": 4, "max_steps": 60, "report_every_steps": 10},
        search={
            "num_trials": 1,
            "max_concurrent_trials": 1,
            "probe": {"steps": 5},
            "space": ONE_SETTING,
        },
    )
    result = Study(spec).run()
    (row,) = result.trials.itertuples()
    assert row.status == "ERROR" and not row.feasible and result.winner is None

    storage_ = JournalStorage(JournalFileBackend(str(result.directory / "optuna.journal")))
    (trial,) = optuna.load_study(study_name="errored", storage=storage_).trials
    assert trial.user_attrs["errored"] is True
    assert trial.constraints and all(value >= 1.0 for value in trial.constraints.values())
    # Ray told Optuna the partial values; what matters is that no sampler sees it as feasible
    assert trial.state == optuna.trial.TrialState.COMPLETE

    # the trial was charged at the calibrated step cost of its setting, not by the clock
    calibration = json.loads((result.directory / "cost_calibration.json").read_text())
    (step_cost,) = calibration["step_seconds"].values()
    assert row.device_seconds == pytest.approx(row.step * step_cost)


def test_export_study_works_on_the_shipped_tiny_study(ray_session, storage):
    """``trimtab export --study`` on studies/tiny.yaml as shipped: the run ends with its final
    report and checkpoint even though ``max_steps`` outlasts the single epoch."""
    from click.testing import CliRunner

    from search.cli import main
    from serving.registry import Registry

    spec = StudySpec.from_yaml("studies/tiny.yaml").model_copy(update={"storage": str(storage)})
    result = Study(spec).run()
    assert result.winner is not None, result.trials[["settings", "val_accuracy", "stalled"]]
    assert result.winner["checkpoint"]

    registry = storage / "registry"
    exported = CliRunner().invoke(
        main, ["export", "--study", str(result.directory), "--registry", str(registry)]
    )
    assert exported.exit_code == 0, exported.output
    (number,) = Registry(registry).versions()
    manifest = Registry(registry).get(number).manifest
    assert manifest.model_name == "tiny" and manifest.lineage["study"] == "tiny"
