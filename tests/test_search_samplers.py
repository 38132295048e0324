"""Every ``search.sampler`` builds the Optuna sampler it names, and ``gp`` learns from the
constraints recorded with ``Trial.set_constraint`` (the path ``ConstrainedOptunaSearch`` uses)."""

from __future__ import annotations

import math

import optuna
import pytest

from search.optuna_wiring import build_sampler
from search.space import ResolvedSpace
from search.spec import FloatRange, StudySpec

EXPECTED = {
    "tpe": optuna.samplers.TPESampler,
    "gp": optuna.samplers.GPSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "random": optuna.samplers.RandomSampler,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sampler_names_build_their_optuna_sampler(name):
    spec = StudySpec(search={"sampler": name, "num_trials": 12})
    assert isinstance(build_sampler(spec), EXPECTED[name])


def test_an_unknown_sampler_is_refused_by_the_spec():
    from search.spec import SpecError

    with pytest.raises(SpecError, match="sampler"):
        StudySpec.from_dict({"search": {"sampler": "cmaes"}})


def _run(sampler_name: str, trials: int, seed: int) -> optuna.Study:
    """A small constrained two-objective study over the real search space. The stand-in for
    training: instability rises with the learning rate (steeply without clipping), cost falls
    with it, and learning rates below 0.01 are infeasible (they stall)."""
    spec = StudySpec(
        search={
            "sampler": sampler_name,
            "num_trials": trials,
            "seed": seed,
            "space": {"learning_rate": {"low": 1e-4, "high": 1.0}},
        }
    )
    space = ResolvedSpace(
        spec.search.space,
        max_norm=FloatRange(low=0.1, high=10.0),
        clip_value=FloatRange(low=1e-4, high=1.0),
    )
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=build_sampler(spec))
    for _ in range(trials):
        trial = study.ask()
        space(trial)
        rate = trial.params["learning_rate"]
        clipped = trial.params["clip_method"] != "none"
        instability = min(1.0, rate * (1.0 if clipped else 5.0))
        cost = -math.log10(rate) + (0.5 if trial.params["precision"] != "fp32" else 0.0)
        trial.set_constraint("not_stalled", 0.01 - rate)
        study.tell(trial, [instability, cost])
    return study


def test_gp_runs_a_constrained_study_and_learns_the_feasible_region():
    trials = 16
    gp = _run("gp", trials, seed=0)
    startup = max(2, min(10, trials // 3))
    completed = gp.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(completed) == trials
    assert all("not_stalled" in t.constraints for t in completed)
    modelled = completed[startup:]
    feasible_share = sum(t.params["learning_rate"] >= 0.01 for t in modelled) / len(modelled)
    # Half of the log range is infeasible: random search lands there half of the time; GP,
    # modelling the constraint, rarely does after its start-up trials.
    assert feasible_share >= 0.8
    assert any(all(v <= 0 for v in t.constraints.values()) for t in gp.best_trials)
