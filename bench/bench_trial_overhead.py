"""Per-trial overhead of a study: trial start → first training step, in-process and with Ray Train.

Small studies whose trials run one after another (``max_concurrent_trials: 1``), alternately
with ``num_workers: 1`` (the loop runs in-process inside the Tune trial) and ``num_workers: 2``
(the trial fits a 2-worker ``TorchTrainer``). Trial start is the driver's time at the Tune
callback ``on_trial_start``. The first training step is stamped by the model itself: the study
uses this file's ``timed_mlp``, the built-in MLP plus a forward that writes ``time.time()`` to a
file the first time it runs (``train()`` runs that forward, to measure activation bytes, right
before its first step); with two workers the later of the two ranks' stamps counts. No library
code is changed. (Moved here from ``bench_search.py``, which now compares samplers.)

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_trial_overhead.py [--overhead-trials 2]
        [--overhead-rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIRECTORY = Path(__file__).resolve().parent
MODEL_FACTORY = f"{Path(__file__).stem}:timed_mlp"
"""Importable in Ray's workers too: ``main`` puts this directory on ``PYTHONPATH``."""


def timed_mlp(num_features: int, num_classes: int, stamp_dir: str, **options: Any):
    """The built-in MLP; its first forward writes a time stamp to ``stamp_dir``."""
    from train_loops.models import MLP

    class StampedMLP(MLP):
        stamped = False

        def forward(self, x):
            if not self.stamped:
                self.stamped = True
                stamp = {"time": time.time(), "pid": os.getpid()}
                Path(stamp_dir, f"{uuid.uuid4().hex}.json").write_text(json.dumps(stamp))
            return super().forward(x)

    return StampedMLP(num_features, num_classes, **options)


def trial_log_callback(path: Path):
    """A Tune callback that appends each trial's start and completion times to ``path``."""
    import ray.tune

    class TrialLog(ray.tune.Callback):
        def _write(self, event: str, trial: Any) -> None:
            with open(path, "a") as log:
                log.write(
                    json.dumps({"event": event, "trial": trial.trial_id, "time": time.time()})
                )
                log.write("\n")

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self._write("start", trial)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self._write("result", trial)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._write("complete", trial)

    return TrialLog()


def overhead_study(root: Path, label: str, workers: int, trials: int, seed: int) -> list[dict]:
    """Run one small study; per trial: seconds from trial start to the first training step."""
    from search.spec import StudySpec
    from search.study import Study

    stamps, log = root / f"{label}-stamps", root / f"{label}-trials.jsonl"
    stamps.mkdir()
    spec = StudySpec.from_dict(
        {
            "name": label,
            "storage": str(root),
            "model": {"name": MODEL_FACTORY, "options": {"stamp_dir": str(stamps)}},
            "training": {
                "epochs": 2,
                "max_steps": 20,
                "report_every_steps": 20,
                "num_workers": workers,
            },
            "search": {
                "num_trials": trials,
                "max_concurrent_trials": 1,
                "sampler": "random",
                "seed": seed,
                "probe": {"steps": 5},
            },
            "constraints": {"min_val_accuracy": None},
        }
    )
    with contextlib.redirect_stdout(sys.stderr):  # Tune's banners; stdout keeps the tables
        Study(spec, callbacks=[trial_log_callback(log)]).run()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    first_steps = sorted(json.loads(p.read_text())["time"] for p in stamps.glob("*.json"))
    rows = []
    for index, start in enumerate(e for e in events if e["event"] == "start"):
        trial = start["trial"]
        end = next(e["time"] for e in events if e["event"] == "complete" and e["trial"] == trial)
        first_result = min(
            e["time"] for e in events if e["event"] == "result" and e["trial"] == trial
        )
        mine = [t for t in first_steps if start["time"] <= t <= end]
        if len(mine) != workers:
            raise RuntimeError(f"{label} trial {trial}: {len(mine)} stamps for {workers} workers")
        rows.append(
            {
                "setup": "in-process (1 worker)"
                if workers == 1
                else f"TorchTrainer ({workers} workers)",
                "index": index,
                "to_first_step": max(mine) - start["time"],
                "to_first_result": first_result - start["time"],
                "trial_seconds": end - start["time"],
            }
        )
    return rows


def print_overhead(rows: list[dict]) -> None:
    print(
        "| trial runs as | trials | start → first step (median) | min–max | "
        "start → first report | whole trial (20 steps) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for setup in dict.fromkeys(r["setup"] for r in rows):
        mine = [r for r in rows if r["setup"] == setup]
        first = [r["to_first_step"] for r in mine]
        print(
            f"| {setup} | {len(mine)} | {statistics.median(first):.2f} s | "
            f"{min(first):.2f}–{max(first):.2f} s | "
            f"{statistics.median(r['to_first_result'] for r in mine):.2f} s | "
            f"{statistics.median(r['trial_seconds'] for r in mine):.2f} s |"
        )
    setups = list(dict.fromkeys(r["setup"] for r in rows))
    if len(setups) == 2:
        a, b = (
            statistics.median(r["to_first_step"] for r in rows if r["setup"] == s) for s in setups
        )
        print(f"\n{setups[1]} / {setups[0]}: {b / a:.1f}x the time to the first step")
    later = [r["to_first_step"] for r in rows if r["index"] > 0 and r["setup"] == setups[0]]
    first = [r["to_first_step"] for r in rows if r["index"] == 0 and r["setup"] == setups[0]]
    if later and first:
        print(
            f"{setups[0]}: first trial of a study {statistics.median(first):.2f} s, "
            f"later trials {statistics.median(later):.2f} s (median)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overhead-trials", type=int, default=2, help="trials per study")
    parser.add_argument("--overhead-rounds", type=int, default=2, help="in-process/Train turns")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray's workers (Tune trials, Train workers) must import MODEL_FACTORY's module.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(BENCH_DIRECTORY), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    sys.path.insert(0, str(BENCH_DIRECTORY))
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    overhead: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
        try:
            for turn in range(args.overhead_rounds):
                for workers in (1, 2):
                    overhead += overhead_study(
                        root, f"overhead-{workers}w-{turn}", workers, args.overhead_trials, turn
                    )
        finally:
            ray.shutdown()
    load = os.getloadavg()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end; "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )
    print_overhead(overhead)


if __name__ == "__main__":
    main()
