"""Search benchmarks: per-trial overhead, and how much front a sampler finds for its budget.

**Overhead** (trial start → first training step). Small studies whose trials run one after
another (``max_concurrent_trials: 1``), alternately with ``num_workers: 1`` (the loop runs
in-process inside the Tune trial) and ``num_workers: 2`` (the trial fits a 2-worker
``TorchTrainer``). Trial start is the driver's time at the Tune callback ``on_trial_start``.
The first training step is stamped by the model itself: the study uses this file's
``timed_mlp``, the built-in MLP plus a forward that writes ``time.time()`` to a file the first
time it runs (``train()`` runs that forward, to measure activation bytes, right before its first
step); with two workers the later of the two ranks' stamps counts. No library code is changed.

**Efficiency**. The same small digits study (default search space, ``epochs: 2``,
``report_every_steps: 20``, ``max_concurrent_trials: 2``) with ``search.sampler: tpe`` and
``random``, for every seed, interleaved (seed 0 TPE, seed 0 random, seed 1 TPE, ...), each in
its own storage directory. For each run: the hypervolume of its feasible trials' front in
(instability_score, cost_dollars / scale), reference point (1, 1), where ``scale`` is 1.1 × the
largest feasible cost over all runs (one scale for every run). Cost is wall-clock seconds
times a price, so it carries this machine's load.

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_search.py [--trials 10]
        [--seeds 0 1 2] [--samplers tpe random] [--overhead-trials 2] [--overhead-rounds 2]
        [--skip-overhead] [--skip-efficiency]

About 15 minutes with the defaults on a busy 2-core machine (a TorchTrainer trial alone
costs ~25 s there).
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

import numpy as np

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


def hypervolume_2d(points: np.ndarray, reference: np.ndarray) -> float:
    """Area dominated by ``points`` (both objectives minimised) and bounded by ``reference``."""
    inside = points[np.all(points < reference, axis=1)]
    if len(inside) == 0:
        return 0.0
    area, best_second = 0.0, reference[1]
    for first, second in inside[np.lexsort((inside[:, 1], inside[:, 0]))]:
        if second < best_second:
            area += (reference[0] - first) * (best_second - second)
            best_second = second
    return float(area)


def efficiency_run(root: Path, sampler: str, seed: int, trials: int) -> dict[str, Any]:
    from search.spec import StudySpec
    from search.study import Study

    spec = StudySpec.from_dict(
        {
            "name": f"{sampler}-seed{seed}",
            "storage": str(root / f"{sampler}-seed{seed}"),
            "training": {"epochs": 2, "report_every_steps": 20},
            "search": {
                "num_trials": trials,
                "max_concurrent_trials": 2,
                "sampler": sampler,
                "seed": seed,
            },
        }
    )
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        result = Study(spec).run()
    table = result.trials
    feasible = table[table["feasible"]]
    return {
        "sampler": sampler,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "trials": len(table),
        "feasible": len(feasible),
        "points": feasible[["instability_score", "cost_dollars"]].to_numpy(dtype=float),
        "front": int(table["on_front"].sum()),
    }


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


def print_efficiency(runs: list[dict]) -> None:
    from optuna._hypervolume import compute_hypervolume

    feasible_costs = [c for run in runs for c in run["points"][:, 1]]
    scale = 1.1 * max(feasible_costs) if feasible_costs else 1.0
    reference = np.array([1.0, 1.0])
    agree = True
    for run in runs:
        points = run["points"] / np.array([1.0, scale])
        run["hypervolume"] = hypervolume_2d(points, reference)
        # Cross-check with Optuna's own implementation.
        inside = points[np.all(points < reference, axis=1)]
        optuna_value = compute_hypervolume(inside, reference) if len(inside) else 0.0
        agree = agree and abs(optuna_value - run["hypervolume"]) < 1e-9
        run["best_instability"] = float(points[:, 0].min()) if len(points) else float("nan")
        run["min_cost"] = float(points[:, 1].min()) if len(points) else float("nan")
    print(
        f"cost scale: 1.1 × max feasible cost = ${scale:.3g}; reference point (1.0, 1.0); "
        f"optuna._hypervolume.compute_hypervolume {'agrees' if agree else 'DISAGREES'}\n"
    )
    print(
        "| sampler | seed | trials | feasible | front | min instability | "
        "min cost / scale | hypervolume | run seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(
            f"| {run['sampler']} | {run['seed']} | {run['trials']} | {run['feasible']} | "
            f"{run['front']} | {run['best_instability']:.4f} | {run['min_cost']:.3f} | "
            f"{run['hypervolume']:.4f} | {run['seconds']:.0f} |"
        )
    print("\n| sampler | hypervolume mean ± std | per seed |")
    print("|---|---:|---|")
    for sampler in dict.fromkeys(run["sampler"] for run in runs):
        values = [run["hypervolume"] for run in runs if run["sampler"] == sampler]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"| {sampler} | {statistics.mean(values):.4f} ± {spread:.4f} | "
            f"{', '.join(f'{v:.4f}' for v in values)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per efficiency run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    parser.add_argument("--overhead-trials", type=int, default=2, help="trials per study")
    parser.add_argument("--overhead-rounds", type=int, default=2, help="in-process/Train turns")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-efficiency", action="store_true")
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
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = Path(tmp)
        ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
        try:
            if not args.skip_overhead:
                for turn in range(args.overhead_rounds):
                    for workers in (1, 2):
                        overhead += overhead_study(
                            root, f"overhead-{workers}w-{turn}", workers, args.overhead_trials, turn
                        )
            if not args.skip_efficiency:
                for seed in args.seeds:
                    for sampler in args.samplers:
                        runs.append(efficiency_run(root, sampler, seed, args.trials))
        finally:
            ray.shutdown()
    load = os.getloadavg()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    if overhead:
        print()
        print_overhead(overhead)
    if runs:
        print()
        print_efficiency(runs)


if __name__ == "__main__":
    main()
