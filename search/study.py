"""The study: spec → probe → Ray Tune + Optuna → trial table → Pareto front → winner.

Example::

    study = Study.from_yaml("studies/digits.yaml")
    result = study.run()          # resumable: the same call continues a killed study
    result.pareto_front, result.winner, result.tune, result.optuna

Layout of ``<storage>/<name>/``: ``data/`` (prepared Parquet splits), ``probe.json``,
``optuna.journal`` (open it with ``optuna-dashboard``; the source of truth on resume),
``tune/attempt-N/`` (Tune's experiment of each start, see :mod:`search.resume`),
``train/`` (Ray Train runs of N-worker trials), ``final/`` (the winner's final fit) and
``report/`` (trials.parquet, pareto.png, report.html).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
import ray.tune
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from policies.selection import Candidate, Selection, build_selection_policy, pareto_indices
from search.console import (
    describe_cluster,
    describe_dataset,
    describe_final_fit,
    describe_probe,
    phase,
)
from search.cost_calibration import CostCalibration, load_or_calibrate
from search.optuna_wiring import (
    DivergenceStopper,
    build_sampler,
    constraint_names,
    constraint_values,
    objective_names,
)
from search.preflight import check_model, nothing_left_if_refused, refusals
from search.probe import ProbeResult, load_or_probe
from search.resume import (
    ResumingOptunaSearch,
    reconcile,
    run_planned_trial,
    study_lock,
    trial_dirname,
)
from search.space import ResolvedSpace, describe_params, search_params, trial_config
from search.spec import StudySpec
from search.trainable import trial_resources
from train_loops.config import TrainConfig
from train_loops.data import DataChangedError, PreparedDataset, prepare_dataset
from train_loops.ray_runtime import ensure_ray

logger = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """What a study hands over. ``tune`` and ``optuna`` are Ray's and Optuna's own objects."""

    spec: StudySpec
    directory: Path
    trials: pd.DataFrame
    """One row per trial: parameters, final metrics, constraints, feasible, on_front, winner."""
    pareto_front: pd.DataFrame
    """The feasible, non-dominated rows of ``trials`` (instability, cost both minimised)."""
    winner: pd.Series | None
    winner_reason: str
    probe: ProbeResult
    tune: ray.tune.ResultGrid
    optuna: optuna.Study
    final_checkpoint: Path | None = None

    @property
    def winner_config(self) -> TrainConfig | None:
        if self.winner is None:
            return None
        return TrainConfig.from_dict(self.winner["train_config"])


class Study:
    """A multi-objective search over clipping, precision and activation checkpointing."""

    def __init__(self, spec: StudySpec, *, callbacks: Sequence[ray.tune.Callback] = ()) -> None:
        self.spec = spec
        self.directory = Path(spec.storage).resolve() / spec.name
        self.callbacks = list(callbacks)
        self.calibration: CostCalibration | None = None
        """The per-step costs trials are charged at (set by :meth:`prepare`)."""

    @classmethod
    def from_yaml(cls, path: Path | str, **kwargs: Any) -> Study:
        return cls(StudySpec.from_yaml(path), **kwargs)

    @property
    def journal_path(self) -> Path:
        return self.directory / "optuna.journal"

    def prepare(self) -> tuple[PreparedDataset, TrainConfig, ProbeResult]:
        """Validate and split the data, build the shared config, run (or reload) the probe
        and the per-step cost calibration."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            dataset = prepare_dataset(self.spec.data.to_data_spec(), self.directory / "data")
        except DataChangedError as error:
            raise DataChangedError(
                f"study {self.spec.name}: {error}; run it under a new name, or delete "
                f"{self.directory} to start over"
            ) from None
        model = self.spec.model
        check_model(model.name, dict(model.options), dataset.num_features, dataset.num_classes)
        phase(logger, "data: %s", describe_dataset(dataset))
        base = self.spec.train_config(dataset.root)
        phase(logger, "gradient probe and per-step cost calibration (kept for reruns) ...")
        probe = load_or_probe(self.directory, base, self.spec)
        self.calibration = load_or_calibrate(self.directory, self.spec, base)
        phase(logger, "probe: %s", describe_probe(probe))
        return dataset, base, probe

    def run(self) -> StudyResult:
        """Run the study to ``num_trials`` completed trials, continuing a killed one."""
        with nothing_left_if_refused(self.directory, refusals()), study_lock(self.directory):
            _dataset, base, probe = self.prepare()
            phase(logger, "starting Ray ...")
            ensure_ray()
            phase(logger, "Ray ready: %s", describe_cluster())
            grid = self._tuner(base, probe).fit()
            study = optuna.load_study(study_name=self.spec.name, storage=self._storage())
            result = self._result(grid, study, probe)
            if self.spec.final_fit.enabled and result.winner is not None:
                result.final_checkpoint = self.final_fit(result.winner_config)
            from search.report import write_report

            write_report(result)
        return result

    def _storage(self) -> JournalStorage:
        return JournalStorage(JournalFileBackend(str(self.journal_path)))

    def _tuner(self, base: TrainConfig, probe: ProbeResult) -> ray.tune.Tuner:
        """A new Tune attempt planned from the journal (see :mod:`search.resume`)."""
        objectives = objective_names(self.spec)
        attempt = reconcile(
            self._storage(), self.spec.name, self.directory, self.spec.search.num_trials, objectives
        )
        trainable = ray.tune.with_resources(
            ray.tune.with_parameters(run_planned_trial, plans=str(attempt.plans_dir)),
            ray.tune.PlacementGroupFactory(_bundles(trial_resources(base))),
        )
        norm_range, value_range = probe.ranges()
        space = ResolvedSpace(self.spec.search.space, max_norm=norm_range, clip_value=value_range)
        searcher = ResumingOptunaSearch(
            space=space,
            metric=objectives,
            mode=["min"] * len(objectives),
            sampler=build_sampler(self.spec, attempt.number),
            study_name=self.spec.name,
            storage=self._storage(),
            spec_json=self.spec.model_dump_json(exclude_unset=True),
            attempt=attempt,
        )
        stop = DivergenceStopper() if self.spec.search.stop_on_divergence else None
        return ray.tune.Tuner(
            trainable,
            param_space=self._param_space(base),
            tune_config=ray.tune.TuneConfig(
                search_alg=searcher,
                num_samples=attempt.num_samples,
                max_concurrent_trials=self._concurrency(base),
                trial_dirname_creator=trial_dirname,
            ),
            run_config=ray.tune.RunConfig(
                name=attempt.name,
                storage_path=str(attempt.tune_root),
                stop=stop,
                callbacks=self.callbacks,
                verbose=0,
                checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=2),
            ),
        )

    def _param_space(self, base: TrainConfig) -> dict[str, Any]:
        return {
            "train": base.to_dict(),
            "train_storage": str(self.directory / "train"),
            "step_costs": dict(self.calibration.step_seconds),
        }

    def _concurrency(self, base: TrainConfig) -> int:
        if self.spec.search.max_concurrent_trials is not None:
            return self.spec.search.max_concurrent_trials
        resources = ray.cluster_resources()
        if base.use_gpu:
            per_trial, available = base.num_workers, resources.get("GPU", 0)
        else:
            per_trial, available = base.num_workers * base.cpus_per_worker, resources.get("CPU", 1)
        return max(1, int(available // per_trial))

    def _result(
        self, grid: ray.tune.ResultGrid, study: optuna.Study, probe: ProbeResult
    ) -> StudyResult:
        trials = trial_table(self.spec, grid)
        front = trials[trials["on_front"]] if len(trials) else trials
        winner, reason = None, "no feasible trial"
        if len(front):
            selection = select_winner(self.spec, trials[trials["feasible"]])
            trials["winner"] = trials["trial_id"] == selection.key
            winner = trials[trials["winner"]].iloc[0]
            reason = selection.reason
            front = trials[trials["on_front"]]
        return StudyResult(
            spec=self.spec,
            directory=self.directory,
            trials=trials,
            pareto_front=front,
            winner=winner,
            winner_reason=reason,
            probe=probe,
            tune=grid,
            optuna=study,
        )

    def final_fit(self, config: TrainConfig) -> Path:
        """Re-train the winner with ``final_fit.num_workers`` data-parallel workers."""
        from train_loops.trainer import build_trainer

        fit = self.spec.final_fit
        # Nothing stops or prunes a final fit, so it reports only when it checkpoints: Ray
        # Train V2 takes at most one report per ~2 s (docs/benchmarks.md, "Train"), and at the
        # trials' cadence the demo's 2-worker fit spent 80 s of its 95 s waiting to report.
        config = config.replace(
            num_workers=fit.num_workers,
            epochs=fit.epochs or config.epochs,
            global_batch_size=_divisible(config.global_batch_size, fit.num_workers),
            report_every_steps=max(config.report_every_steps, config.checkpoint_every_steps),
        )
        workers, epochs = fit.num_workers, config.epochs
        phase(logger, "final fit of the winner: %d workers, %d epochs ...", workers, epochs)
        result = build_trainer(config, storage_path=self.directory, name="final").fit()
        phase(logger, "final fit: %s", describe_final_fit(result.metrics))
        return Path(result.checkpoint.path)


def trial_table(spec: StudySpec, grid: ray.tune.ResultGrid) -> pd.DataFrame:
    """One row per trial from Tune's results; feasibility and the front computed from it."""
    rows = []
    for result in grid:
        config = result.config or {}
        params = search_params(config)
        metrics = dict(result.metrics or {})
        row: dict[str, Any] = {
            "trial_id": metrics.get("trial_id", (result.path or "").rsplit("_", 1)[-1]),
            "status": "ERROR" if result.error else "TERMINATED",
            "settings": describe_params(params),
            **{f"param_{k}": v for k, v in params.items()},
        }
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[key] = float(value)
        row["trial_id"] = str(metrics.get("trial_id", row["trial_id"]))
        constraints = constraint_values(spec, metrics) if metrics else [1.0]
        for name, value in zip(constraint_names(spec), constraints, strict=False):
            row[f"constraint_{name}"] = value
        row["feasible"] = bool(metrics) and not result.error and all(c <= 0 for c in constraints)
        row["diverged"] = float(metrics.get("diverged", 0.0))
        row["stopped_early"] = float(metrics.get("step", 0)) < float(
            metrics.get("steps_planned", 0)
        )
        row["train_config"] = trial_config(config).to_dict() if "train" in config else None
        row["checkpoint"] = result.checkpoint.path if result.checkpoint else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values("trial_id").reset_index(drop=True)
    table["on_front"] = False
    feasible = table[table["feasible"]]
    if len(feasible):
        points = feasible[objective_names(spec)].to_numpy().tolist()
        front_rows = feasible.index[pareto_indices(points)]
        table.loc[front_rows, "on_front"] = True
    table["winner"] = False
    return table


def select_winner(spec: StudySpec, feasible: pd.DataFrame) -> Selection:
    """The selection policy's choice among the feasible trials (see
    :class:`~policies.selection.PreferLowerValidationLoss`)."""
    selection = spec.selection
    policy = build_selection_policy(selection.policy, selection.tolerance, selection.cost_tolerance)
    cost = spec.objectives.cost
    return policy(
        [
            Candidate(row.trial_id, row.instability_score, getattr(row, cost), row.val_loss)
            for row in feasible.itertuples()
        ]
    )


def _bundles(resources: dict[str, float] | list[dict[str, float]]) -> list[dict[str, float]]:
    return resources if isinstance(resources, list) else [resources]


def _divisible(global_batch: int, workers: int) -> int:
    return max(workers, math.ceil(global_batch / workers) * workers)
