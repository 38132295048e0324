"""The demo end to end, all real: a 16-trial study on the stress workload (Ray Tune + Optuna)
→ a Pareto front of several points and the winner's reason → 2-worker Ray Train final fit →
ONNX/INT8 gate → registry → Ray Serve on 127.0.0.1 → an HTTP prediction equal to PyTorch's.
And, without Ray: the shipped ``studies/demo.yaml`` is the study the demo runs, and the front
is printed with every objective and the winner marked."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from search.demo import demo_spec, front_text, unstable_count
from search.spec import StudySpec

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_demo_finds_a_front_and_serves_predictions_that_match_pytorch(ray_session, tmp_path):
    from search.demo import run_demo

    outcome = run_demo(tmp_path / "demo", port=_free_port(), keep_serving=False)
    assert outcome.front_size >= 2  # a trade-off, not a single dominating setting
    assert outcome.unstable_trials >= 1  # the space really holds unstable settings
    assert outcome.winner_reason and outcome.winner_reason != "no feasible trial"
    assert outcome.url.startswith("http://127.0.0.1:")
    assert outcome.labels_match
    assert outcome.max_probability_difference < 0.05  # INT8 (or FP32) vs FP32 PyTorch
    assert outcome.report.exists()
    assert (tmp_path / "demo" / "registry" / "aliases" / "champion.json").exists()


def test_the_shipped_demo_study_is_the_one_the_demo_runs():
    shipped = StudySpec.from_yaml(ROOT / "studies" / "demo.yaml")
    assert shipped == demo_spec(Path(shipped.storage))
    stress = StudySpec.from_yaml(ROOT / "studies" / "stress.yaml")
    # a short variant of the stress study: its data, model and search space
    assert (shipped.data, shipped.model, shipped.search.space) == (
        stress.data,
        stress.model,
        stress.search.space,
    )


def test_front_text_shows_every_objective_and_marks_the_winner():
    spec = demo_spec(Path("runs"))
    front = pd.DataFrame(
        {
            "trial_id": ["b", "a"],
            "instability_score": [0.2, 0.0],
            "cost_to_target_dollars": [1e-6, 3e-6],
            "val_loss": [0.61, 0.55],
            "val_accuracy": [0.78, 0.80],
            "settings": ["sgd lr=0.1 none", "adamw lr=0.01 norm(1.0)"],
        }
    )
    result = SimpleNamespace(spec=spec, pareto_front=front, winner=front.iloc[1])
    text = front_text(result)
    lines = text.splitlines()
    assert lines[0].startswith("Pareto front: 2 points")
    assert "instability, cost_to_target_dollars, val_loss" in lines[0]
    assert lines[2].split()[:3] == ["*", "a", "0.000"]  # most stable first, the winner marked
    assert lines[3].split()[:5] == ["b", "0.200", "$1e-06", "0.610", "0.780"]


def test_unstable_count_takes_diverged_and_high_scores():
    trials = pd.DataFrame({"diverged": [1.0, 0.0, 0.0], "instability_score": [1.0, 0.3, 0.1]})
    assert unstable_count(trials) == 2
    assert unstable_count(pd.DataFrame()) == 0
