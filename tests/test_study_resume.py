"""A study whose driver is killed (process group, SIGKILL) while two trials run at a time,
rerun with the same command, ends as if it had never been killed.

Checked from the Optuna journal (the source of truth) and the trial table: exactly
``num_trials`` COMPLETE, none left RUNNING, no completed trial trained again (a model plugin
logs every training start), every completed trial on the table with its original metrics,
and no process of a killed or finished study left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

NAME = "killed"
TRIALS = 4


def _config(tmp_path: Path, storage: Path, starts: Path) -> Path:
    config = tmp_path / "killed.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": NAME,
                "storage": str(storage),
                "model": {
                    "name": "tests.plugin_counting:counted_mlp",
                    "options": {
                        "starts": str(starts),
                        "step_seconds": 0.1,
                        "hidden": 16,
                        "depth": 1,
                    },
                },
                "training": {
                    "epochs": 1,
                    "max_steps": 24,
                    "report_every_steps": 4,
                    "checkpoint_every_steps": 4,
                },
                "search": {
                    "num_trials": TRIALS,
                    "max_concurrent_trials": 2,
                    "probe": {"steps": 5},
                    "space": {
                        "clipping": {"methods": ["none", "norm"]},
                        "precision": ["fp32"],
                        "activation_checkpointing": [0],
                        "optimizer": ["adamw"],
                        "warmup_steps": [0],
                    },
                },
                "objectives": {"cost": "cost_dollars"},
                "constraints": {"min_val_accuracy": None, "allow_stalled": True},
            }
        )
    )
    return config


def _journal(directory: Path) -> list[optuna.trial.FrozenTrial]:
    if not (directory / "optuna.journal").exists():
        return []
    storage = JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))
    try:
        return optuna.load_study(study_name=NAME, storage=storage).get_trials()
    except KeyError:  # the study is not in the journal yet
        return []


def _session_processes(session: int) -> list[str]:
    """The processes still in ``session`` (the study's own: it was started in a new one)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields[3]: session id
            alive.append(stat.parent.name)
    return alive


def _wait_for_no_processes(session: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (alive := _session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, start_new_session=True, stdout=log.open("a"), stderr=subprocess.STDOUT
    )


def _kill_when(
    process: subprocess.Popen, directory: Path, ready, what: str
) -> list[optuna.trial.FrozenTrial]:
    """SIGKILL the study's process group as soon as ``ready()``; the journal at that moment."""
    deadline = time.monotonic() + 240
    while not ready():
        assert process.poll() is None, f"the study ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    snapshot = _journal(directory)
    assert _wait_for_no_processes(process.pid) == [], f"processes outlived the kill {what}"
    return snapshot


def _training_checkpointed(attempt: Path) -> bool:
    """A trial of ``attempt`` that trains (not a replay) has written a checkpoint."""
    for checkpoint in attempt.glob("trial_*/checkpoint_*"):
        trial_id = checkpoint.parent.name.removeprefix("trial_")
        plan = attempt / "plans" / f"{trial_id}.json"
        if plan.exists() and '"replay"' not in plan.read_text():
            return True
    return False


def _complete(trials) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def test_killed_twice_with_two_trials_at_a_time_ends_as_if_never_killed(storage, tmp_path):
    starts = tmp_path / "starts"
    starts.mkdir()
    config = _config(tmp_path, storage, starts)
    command = [sys.executable, "-m", "search", "study", "run", str(config)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    directory = storage / NAME
    log = tmp_path / "study.log"

    # 1. right after the first trial completes (the other one is mid-run)
    first = _start(command, env, log)
    at_first = _kill_when(
        first, directory, lambda: len(_complete(_journal(directory))) >= 1, "a trial completed"
    )
    # 2. mid-trial in the second attempt: a trial of it has written a checkpoint
    second = _start(command, env, log)
    at_second = _kill_when(
        second,
        directory,
        lambda: _training_checkpointed(directory / "tune" / "attempt-2"),
        "a trial of the second attempt checkpointed",
    )
    # 3. to the end
    console = tmp_path / "third.log"
    third = _start(command, env, console)
    assert third.wait(timeout=600) == 0, console.read_text()[-3000:]
    assert _wait_for_no_processes(third.pid) == [], "processes outlived the finished study"

    trials = _journal(directory)
    complete = _complete(trials)
    assert len(complete) == TRIALS, [t.state for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    # no completed trial trained again: its runs are what they were when it completed
    # A trial the sampler created just before a kill may never have been handed to Tune: it
    # has no runs, and the restart failed it (it is not RUNNING, checked above).
    runs = {t.number: t.user_attrs.get("tune_trial_ids", []) for t in trials}
    assert all(runs[t.number] for t in complete)
    final = {t.number: t.user_attrs["result"] for t in complete}
    for snapshot in (at_first, at_second):
        for trial in _complete(snapshot):
            assert runs[trial.number] == trial.user_attrs["tune_trial_ids"]
            assert final[trial.number] == trial.user_attrs["result"]
    # every training start belongs to one run of one trial and a run starts at most once (a
    # run killed before it started is not counted); a completed trial's runs all trained
    started = (starts / "starts.log").read_text().split()
    assert set(started) <= {run for ids in runs.values() for run in ids}
    assert len(started) == len(set(started))
    for trial in complete:
        assert set(runs[trial.number]) <= set(started)
    for number, ids in runs.items():
        if len(ids) > 1:  # ran again after a kill: resumed from a checkpoint, not from step 0
            trial = next(t for t in trials if t.number == number)
            assert trial.user_attrs["resumed_from"]
            if trial.state == TrialState.COMPLETE:
                assert trial.user_attrs["result"]["resumed_from_step"] > 0

    # the table: every completed trial, once, with its original metrics
    table = pd.read_parquet(directory / "report" / "trials.parquet")
    assert len(table) == TRIALS and (table["status"] == "TERMINATED").all()
    for trial in complete:
        result = trial.user_attrs["result"]
        # found by its parameters (two trials may well end with the same metrics, and a replayed
        # trial is listed under its latest attempt's Tune id)
        same = pd.Series(True, index=table.index)
        for name, value in trial.params.items():
            same &= table[f"param_{name}"] == value
        row = table[same]
        assert len(row) == 1, (trial.number, trial.params)
        for key in ("instability_score", "val_accuracy", "cost_to_target_dollars", "step"):
            assert row.iloc[0][key] == result[key], (trial.number, key)

    # the console: each phase, our lines only (Ray's and Optuna's go to study.log)
    printed = console.read_text()
    phases = ["data: ", "gradient probe", "probe: max_norm", "starting Ray", "Ray ready: "]
    phases += ["continuing: ", "trial ", "Pareto front", "report: "]
    assert all(line in printed for line in phases), printed
    noise = ["INFO", "WARNING", "Warning", "╭", "TensorBoard", "View detailed results", "Trial "]
    assert not [word for word in noise if word in printed], printed
    assert "Started a local Ray instance" in (directory / "study.log").read_text()
