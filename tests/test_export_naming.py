"""``trimtab export`` names a model after the study its checkpoint came from, else its data."""

from __future__ import annotations

import json

from serving.cli_export import dataset_name, study_lineage


def test_a_checkpoint_inside_a_study_names_the_study_and_its_trial(tmp_path):
    study = tmp_path / "runs" / "breast-cancer"
    (study).mkdir(parents=True)
    (study / "optuna.journal").write_text("")
    trial = study / "tune" / "attempt-2" / "trial_3f2a1b0c" / "checkpoint_000004"
    final = study / "final" / "checkpoint_2026-01-01_00-00-00.000000"
    assert study_lineage(trial) == {"study": "breast-cancer", "trial": "3f2a1b0c"}
    assert study_lineage(final) == {"study": "breast-cancer"}
    assert study_lineage(tmp_path / "elsewhere" / "checkpoint") == {}


def test_outside_a_study_the_data_set_names_the_model(tmp_path):
    def named(source: str) -> str:
        (tmp_path / "dataset.json").write_text(json.dumps({"source": source}))
        return dataset_name(tmp_path)

    assert named("sklearn digits") == "digits"
    assert named("/data/breast cancer.parquet") == "breast-cancer"
    assert named("/data/iris") == "iris"
