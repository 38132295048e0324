"""The study report renders from saved files: the instability-by-learning-rate figure, the
importances per objective (only when informative) and the cost calibration's device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.report import MIN_TRIALS_FOR_IMPORTANCES, regenerate_report
from search.report_plots import instability_by_learning_rate_plot, trial_outcome

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ("none", "norm", "zclip")


def _trials(count: int) -> pd.DataFrame:
    """A trial table shaped like ``search.study.trial_table``'s: high learning rates without
    clipping diverge, low ones stall (infeasible), the rest are feasible."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        method = METHODS[index % len(METHODS)]
        rate = float(10 ** rng.uniform(-2, 0))
        diverged = method == "none" and rate > 0.1
        stalled = rate < 0.02
        score = 1.0 if diverged else (0.7 if stalled else float(rate / 3))
        rows.append(
            {
                "trial_id": f"t{index:02d}",
                "settings": f"{method} lr={rate:.2e}",
                "param_clip_method": method,
                "param_learning_rate": rate,
                "instability_score": score,
                "cost_to_target_dollars": 1e-5 * (1 + index),
                "val_loss": 0.5 + score,
                "val_accuracy": 0.8 - 0.5 * score,
                "diverged": float(diverged),
                "feasible": not diverged and not stalled,
                "on_front": False,
                "winner": index == 4,
                "step": 40.0 if diverged else 400.0,
                "steps_planned": 400.0,
            }
        )
    return pd.DataFrame(rows)


def _study_directory(tmp_path: Path, trials: int, calibration: bool = True) -> Path:
    directory = tmp_path / "study"
    (directory / "report").mkdir(parents=True)
    table = _trials(trials)
    table.to_parquet(directory / "report" / "trials.parquet", index=False)
    summary = {
        "name": "stress",
        "cost": "cost_to_target_dollars",
        "objectives": ["instability", "cost", "validation loss"],
        "winner": "t04",
        "winner_reason": "knee of the front",
        "final_checkpoint": None,
    }
    (directory / "report" / "summary.json").write_text(json.dumps(summary))
    if calibration:
        (directory / "cost_calibration.json").write_text(
            json.dumps(
                {
                    "fingerprint": "abc",
                    "device": "cpu (Test CPU)",
                    "clock": "thread CPU time",
                    "step_seconds": {"fp32|ac=0|sgd|batch=16": 0.0025},
                    "warnings": ["fp16 is 2.3x slower per step than fp32 on cpu"],
                }
            )
        )
    storage = JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))
    study = optuna.create_study(study_name="stress", storage=storage, directions=["minimize"] * 3)
    for row in table.itertuples():
        study.enqueue_trial(
            {"clip_method": row.param_clip_method, "learning_rate": row.param_learning_rate}
        )
        trial = study.ask()
        trial.suggest_categorical("clip_method", list(METHODS))
        trial.suggest_float("learning_rate", 0.01, 1.0, log=True)
        study.tell(trial, [row.instability_score, 0.0, row.val_loss])  # cost never varies
    return directory


def test_outcomes_mark_diverged_over_infeasible_over_feasible():
    table = _trials(12)
    outcome = trial_outcome(table)
    assert set(outcome[table["diverged"] >= 1]) == {"diverged"}
    assert set(outcome[table["feasible"]]) == {"feasible"}
    assert "infeasible" in set(outcome)


def test_report_writes_the_instability_by_learning_rate_plot_and_sections(tmp_path):
    directory = _study_directory(tmp_path, trials=12)
    page = regenerate_report(directory).read_text()
    figure = directory / "report" / "instability_by_lr.png"
    assert figure.read_bytes().startswith(PNG_MAGIC)
    assert figure.stat().st_size > 10_000  # three panels' worth of drawing, not an empty canvas
    assert "Instability against learning rate, per clipping method" in page
    assert "cpu (Test CPU)" in page and "cost_to_target_dollars" in page
    assert "fp16 is 2.3x slower" in page
    # Instability and validation loss vary: importances; the cost never varies: a reason.
    assert "<h3>instability</h3><ol><li>" in page
    assert "<h3>validation loss</h3><ol><li>" in page
    assert "<h3>cost</h3><p>not shown: every trial has the same value" in page


def test_report_without_calibration_or_enough_trials_says_so(tmp_path):
    directory = _study_directory(tmp_path, trials=MIN_TRIALS_FOR_IMPORTANCES - 2, calibration=False)
    page = regenerate_report(directory).read_text()
    assert "No cost calibration in the study directory" in page
    assert f"importances need {MIN_TRIALS_FOR_IMPORTANCES}" in page
    assert (directory / "report" / "instability_by_lr.png").exists()


@pytest.mark.parametrize("missing", ["param_learning_rate", "param_clip_method"])
def test_no_plot_when_the_study_did_not_search_learning_rate_or_clipping(missing):
    assert instability_by_learning_rate_plot(_trials(6).drop(columns=[missing])) == b""
