"""Resume: the Optuna journal is the source of truth; each start of a study is a new Tune attempt.

Tune's experiment state is saved every few seconds and lags behind the journal, so a killed
driver leaves the two disagreeing (a trial COMPLETE in the journal but RUNNING in Tune's state,
a trial Tune never recorded, ...). trimtab therefore never restores Tune's state. On every start
:func:`reconcile` reads the journal and plans the new attempt (``<study>/tune/attempt-N/``):

- a **COMPLETE** trial is *replayed*: its Tune trial reports the final result and checkpoint
  the journal and the earlier attempt recorded, without training (it is told to Optuna once);
- a **RUNNING** trial (its driver died) is *resumed* from its last valid checkpoint as the same
  Optuna trial, or, when it left none, told FAIL and *replaced* by a new trial;
- the rest of ``num_trials`` are *new* trials the sampler suggests.

:class:`ResumingOptunaSearch` hands Tune those plans first, then new trials; it records on each
Optuna trial which Tune trial ran it (``tune_attempt``, ``tune_trial_id``) and, when it is told,
the trial's final result (``result``) so a later attempt can replay it. :func:`run_planned_trial`
is the Tune trainable: it reads its plan and replays, resumes or trains.

A study directory is run by one driver at a time (:func:`study_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from search.console import phase
from search.optuna_wiring import ConstrainedOptunaSearch

logger = logging.getLogger(__name__)

ATTEMPT_PREFIX = "attempt-"
RESULT_ATTR = "result"
"""User attribute holding a told trial's final reported metrics (numbers only)."""
TUNE_RESULT_KEYS = frozenset(
    {
        "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname",
        "node_ip", "config", "time_since_restore", "iterations_since_restore",
        "training_iteration", "done", "timesteps_total", "episodes_total", "experiment_tag",
        "checkpoint_dir_name", "should_checkpoint", "timesteps_since_restore",
    }
)  # fmt: skip
"""Keys Tune fills in itself; a replayed report leaves them to Tune."""


class StudyBusyError(RuntimeError):
    """Another driver is running the same study directory."""


@contextlib.contextmanager
def study_lock(directory: Path) -> Iterator[None]:
    """Hold ``<study>/driver.lock`` while the driver runs; refuse a second driver.

    The lock is an ``flock``: the kernel drops it when its holder dies, even by SIGKILL, so a
    killed study never leaves a stale lock behind."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "driver.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StudyBusyError(
                f"study {directory} is being run by {holder}; wait for it or stop it"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class TrialPlan:
    """What one Tune trial of this attempt does. ``number`` is the Optuna trial number
    (``None`` for a new trial until the sampler asks)."""

    kind: Literal["new", "resume", "replay"]
    number: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    """resume: the checkpoint to continue from; replay: the checkpoint to report again."""
    train_run: str | None = None
    """resume of an N-worker trial: the Ray Train run name that continues from its checkpoint."""
    result: dict[str, float] | None = None
    """replay: the final result to report."""
    errored: bool = False
    """replay: the trial raised after reporting; the replay raises too (so it stays ERROR)."""
    runs: list[str] = field(default_factory=list)
    """resume: the Tune trials that ran this Optuna trial before."""

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> TrialPlan:
        if not path.exists():
            return cls("new")
        return cls(**json.loads(path.read_text()))


@dataclass
class Attempt:
    """One start of a study: its Tune experiment name and the plans for its first trials."""

    number: int
    tune_root: Path
    plans: list[TrialPlan]
    num_samples: int

    @property
    def name(self) -> str:
        return f"{ATTEMPT_PREFIX}{self.number}"

    @property
    def path(self) -> Path:
        return self.tune_root / self.name

    @property
    def plans_dir(self) -> Path:
        return self.path / "plans"


def latest_attempt(tune_root: Path) -> Path | None:
    """The newest ``attempt-N`` directory under ``tune_root`` (``None`` if the study never ran)."""
    attempts = _attempt_numbers(tune_root)
    return tune_root / f"{ATTEMPT_PREFIX}{max(attempts)}" if attempts else None


def _attempt_numbers(tune_root: Path) -> list[int]:
    if not tune_root.is_dir():
        return []
    return [
        int(path.name.removeprefix(ATTEMPT_PREFIX))
        for path in tune_root.iterdir()
        if path.name.startswith(ATTEMPT_PREFIX) and path.name.removeprefix(ATTEMPT_PREFIX).isdigit()
    ]


def trial_dirname(trial: Any) -> str:
    """Tune's ``trial_dirname_creator``: ``trial_<id>``, so a later attempt finds a trial's
    checkpoints from the id the journal recorded."""
    return f"trial_{trial.trial_id}"


def reconcile(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    study_directory: Path,
    num_trials: int,
    objectives: list[str],
) -> Attempt:
    """Read the journal, settle the trials a killed driver left RUNNING, plan the next attempt."""
    tune_root = study_directory / "tune"
    attempt = Attempt(max(_attempt_numbers(tune_root), default=0) + 1, tune_root, [], num_trials)
    names = {summary.study_name for summary in storage.get_all_studies()}
    if study_name not in names:
        return attempt
    study = optuna.load_study(study_name=study_name, storage=storage)
    replays, resumes = [], []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            replays.append(_replay_plan(trial, tune_root, objectives))
        elif trial.state == TrialState.RUNNING:
            plan = _resume_plan(trial, tune_root, study_directory / "train")
            if plan is None:
                logger.info("trial %d left no checkpoint: failed, to be replaced", trial.number)
                study.tell(trial.number, state=TrialState.FAIL)
            else:
                resumes.append(plan)
    attempt.plans = resumes + replays
    attempt.num_samples = max(num_trials, len(replays) + len(resumes))
    phase(
        logger,
        "continuing: %d completed trials kept (not trained again), %d resumed from their "
        "checkpoints, %d new",
        len(replays),
        len(resumes),
        attempt.num_samples - len(attempt.plans),
    )
    return attempt


def _replay_plan(
    trial: optuna.trial.FrozenTrial, tune_root: Path, objectives: list[str]
) -> TrialPlan:
    result = trial.user_attrs.get(RESULT_ATTR)
    if result is None:  # told before results were recorded: the objective values at least
        result = dict(zip(objectives, trial.values or [], strict=False))
    return TrialPlan(
        "replay",
        number=trial.number,
        params=dict(trial.params),
        checkpoint=_str(latest_checkpoint(_trial_dir(trial, tune_root))),
        result=result,
        errored=bool(trial.user_attrs.get("errored", False)),
    )


def _resume_plan(
    trial: optuna.trial.FrozenTrial, tune_root: Path, train_root: Path
) -> TrialPlan | None:
    attrs = trial.user_attrs
    plan = TrialPlan(
        "resume", trial.number, dict(trial.params), runs=list(attrs.get("tune_trial_ids", []))
    )
    checkpoint = latest_checkpoint(_trial_dir(trial, tune_root))
    if checkpoint is None and attrs.get("resumed_from"):  # killed again before a new checkpoint
        checkpoint = _first_loadable([Path(attrs["resumed_from"])])
    if checkpoint is not None:
        return replace(plan, checkpoint=str(checkpoint))
    run = attrs.get("train_run")
    if run and any((train_root / run).glob("checkpoint_*")):
        return replace(plan, train_run=run)
    return None


def _trial_dir(trial: optuna.trial.FrozenTrial, tune_root: Path) -> Path | None:
    attempt, trial_id = trial.user_attrs.get("tune_attempt"), trial.user_attrs.get("tune_trial_id")
    if attempt is None or trial_id is None:
        return None
    return tune_root / f"{ATTEMPT_PREFIX}{attempt}" / f"trial_{trial_id}"


def latest_checkpoint(trial_dir: Path | None) -> Path | None:
    """The newest ``checkpoint_*`` of a Tune trial whose state loads (a driver killed while
    Tune copied a checkpoint can leave the newest one incomplete)."""
    if trial_dir is None or not trial_dir.is_dir():
        return None
    return _first_loadable(sorted(trial_dir.glob("checkpoint_*"), reverse=True))


def _first_loadable(candidates: list[Path]) -> Path | None:
    from train_loops.checkpoint import load_checkpoint, load_config

    for candidate in candidates:
        try:
            load_checkpoint(candidate)
            load_config(candidate)
        except Exception as error:  # any unreadable file: try the one before
            logger.info("skipping unreadable checkpoint %s: %s", candidate, error)
            continue
        return candidate
    return None


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


class ResumingOptunaSearch(ConstrainedOptunaSearch):
    """:class:`ConstrainedOptunaSearch` that first hands out an :class:`Attempt`'s plans.

    Resumed trials continue their Optuna trial (told once, when they finish); replayed ones
    are never told again; new ones are asked from the sampler."""

    def __init__(self, *args: Any, attempt: Attempt, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attempt_number = attempt.number
        self._plans_dir = str(attempt.plans_dir)
        self._pending = list(attempt.plans)
        self._replays: set[str] = set()
        Path(self._plans_dir).mkdir(parents=True, exist_ok=True)

    def suggest(self, trial_id: str) -> dict | None:
        if not self._pending:
            config = super().suggest(trial_id)
            if config is not None:
                plan = TrialPlan("new", number=self._ot_trials[trial_id].number)
                self._record_run(self._ot_trials[trial_id], trial_id, plan)
                plan.write(self._plan_path(trial_id))
            return config
        plan = self._pending.pop(0)
        plan.write(self._plan_path(trial_id))
        if plan.kind == "replay":
            self._replays.add(trial_id)
        else:
            frozen = self._ot_study.get_trials(deepcopy=False)[plan.number]
            ot_trial = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            self._ot_trials[trial_id] = ot_trial
            self._record_run(ot_trial, trial_id, plan)
        return dict(plan.params)

    def _record_run(self, ot_trial: optuna.trial.Trial, trial_id: str, plan: TrialPlan) -> None:
        """Where this trial's checkpoints will be, for the next attempt if this one dies."""
        ot_trial.set_user_attr("tune_attempt", self._attempt_number)
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        ot_trial.set_user_attr("tune_trial_ids", [*plan.runs, trial_id])
        ot_trial.set_user_attr("train_run", plan.train_run or f"train-{trial_id}")
        if plan.checkpoint:
            ot_trial.set_user_attr("resumed_from", plan.checkpoint)

    def _plan_path(self, trial_id: str) -> Path:
        return Path(self._plans_dir) / f"{trial_id}.json"

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._replays:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._replays:  # told in an earlier attempt
            self._completed_trials.add(trial_id)
            return
        final = result or self._last_results.get(trial_id)
        if final and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._ot_trials[trial_id].set_user_attr(RESULT_ATTR, _numbers(final))
        super().on_trial_complete(trial_id, result=result, error=error)


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in result.items()
        if key not in TUNE_RESULT_KEYS
        and not key.startswith("config/")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


class ReplayedError(RuntimeError):
    """Raised by the replay of a trial that raised in an earlier attempt (it stays ERROR)."""


def run_planned_trial(config: dict[str, Any], plans: str) -> None:
    """The Tune trainable of a study: replay, resume or train, as this trial's plan says.

    Bind ``plans`` with ``ray.tune.with_parameters(run_planned_trial, plans=...)``."""
    import ray.tune

    from search.trainable import run_trial

    trial_id = ray.tune.get_context().get_trial_id()
    plan = TrialPlan.read(Path(plans) / f"{trial_id}.json")
    if plan.kind == "replay":
        checkpoint = plan.checkpoint and ray.tune.Checkpoint.from_directory(plan.checkpoint)
        ray.tune.report(dict(plan.result or {}), checkpoint=checkpoint or None)
        if plan.errored:
            raise ReplayedError(f"Optuna trial {plan.number} raised in an earlier attempt")
        return
    if plan.kind == "resume":
        origin = plan.checkpoint or plan.train_run
        logger.info("Optuna trial %d resumes from %s", plan.number, origin)
    run_trial(
        config,
        resume_from=Path(plan.checkpoint) if plan.checkpoint else None,
        train_run_name=plan.train_run,
    )
