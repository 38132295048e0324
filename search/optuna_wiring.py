"""Ray Tune ↔ Optuna: objectives, constraints that reach the sampler, and the divergence stopper.

Ray's ``OptunaSearch`` tells Optuna only the objective values. :class:`ConstrainedOptunaSearch`
records each constraint on the Optuna trial (``Trial.set_constraint``, Optuna 5's replacement
for the deprecated ``constraints_func``) just before the trial is told, so the TPE and NSGA-II
samplers learn which region is infeasible.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from search.spec import StudySpec

logger = logging.getLogger(__name__)

INSTABILITY = "instability_score"


VALIDATION_LOSS = "val_loss"


def objective_names(spec: StudySpec) -> list[str]:
    """All minimised: the detector's instability score, the configured cost, and the
    validation loss when the spec asks for it."""
    names = [INSTABILITY, spec.objectives.cost]
    if spec.objectives.validation_loss:
        names.append(VALIDATION_LOSS)
    return names


def constraint_values(spec: StudySpec, result: dict[str, Any]) -> list[float]:
    """Optuna's convention: each value ``<= 0`` is satisfied. A diverged run violates the first;
    a stalled one (it learned too little) the second unless ``allow_stalled``."""
    values = [float(result.get("diverged", 1.0))]
    limits = spec.constraints
    if not limits.allow_stalled:
        values.append(float(result.get("stalled", 1.0)))
    if limits.min_val_accuracy is not None:
        values.append(limits.min_val_accuracy - float(result.get("val_accuracy", 0.0)))
    if limits.max_peak_memory_mb is not None:
        values.append(float(result.get("peak_memory_mb", float("inf"))) - limits.max_peak_memory_mb)
    return values


def constraint_names(spec: StudySpec) -> list[str]:
    names = ["not_diverged"]
    if not spec.constraints.allow_stalled:
        names.append("not_stalled")
    if spec.constraints.min_val_accuracy is not None:
        names.append("min_val_accuracy")
    if spec.constraints.max_peak_memory_mb is not None:
        names.append("max_peak_memory_mb")
    return names


ERRORED_VIOLATION = 1.0
"""Every constraint of a trial that raised is told to Optuna as at least this far violated."""


class ConstrainedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that stores each trial's constraint values before telling Optuna.

    A trial that raised after reporting reaches Ray's searcher with no result (Optuna would
    mark it FAIL, which samplers ignore) or with partial values (COMPLETE, feasible as far as
    Optuna knew). Here it is told with its last reported values, every constraint marked
    violated and the user attribute ``errored`` set: infeasible in the journal, as in our trial
    table, so samplers learn to avoid the region. A trial that raised before its first report
    stays FAIL."""

    def __init__(self, *args: Any, spec_json: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spec_json = spec_json  # a string pickles with the searcher state on restore
        self._last_results: dict[str, dict[str, Any]] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last_results[trial_id] = dict(result)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        last = self._last_results.pop(trial_id, None)
        if error and not result:
            result = last
        if result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            spec = StudySpec.model_validate_json(self._spec_json)
            ot_trial = self._ot_trials[trial_id]
            values = constraint_values(spec, result)
            if error:
                values = [max(value, ERRORED_VIOLATION) for value in values]
            for name, value in zip(constraint_names(spec), values, strict=True):
                ot_trial.set_constraint(name, value)
            ot_trial.set_user_attr("diverged", bool(result.get("diverged", 0.0)))
            ot_trial.set_user_attr("errored", bool(error))
            ot_trial.set_user_attr("tune_trial_id", trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)


def startup_trials(num_trials: int) -> int:
    """Random trials a model-based sampler (TPE, GP) sees before it models: a third of the
    budget, at least 2 and at most 10."""
    return max(2, min(10, num_trials // 3))


def build_sampler(spec: StudySpec, attempt: int = 1) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``search.sampler`` names, seeded with ``search.seed`` (plus
    ``attempt - 1``: a study continued after a kill must not replay the first attempt's random
    draws, which would propose the same configurations again).

    Every one of them reads the constraints :class:`ConstrainedOptunaSearch` records with
    ``Trial.set_constraint``: TPE and NSGA-II rank infeasible trials behind feasible ones; GP
    fits one Gaussian process per constraint and multiplies LogEHVI by the probability of
    feasibility. ``gp`` models the parameters every trial has (clip method, precision,
    activation checkpointing, learning rate, optimizer, warm-up); a method's own threshold
    exists only in that method's trials, so GP draws it at random (TPE models it, grouped)."""
    search = spec.search
    seed = search.seed + attempt - 1
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed,
            population_size=max(4, min(50, search.num_trials // 2)),
        )
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=startup_trials(search.num_trials),
            # The conditional thresholds are sampled independently by design (see above).
            warn_independent_sampling=False,
        )
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=startup_trials(search.num_trials),
        multivariate=True,
        group=True,  # conditional thresholds: one group per clipping method
    )


class DivergenceStopper(Stopper):
    """Ends a trial the moment a report says ``diverged``; the trial's last report (with its
    finite penalty values) is what Optuna is told, so the front is not distorted."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return float(result.get("diverged", 0.0)) >= 1.0

    def stop_all(self) -> bool:
        return False
