"""Does ``studies/stress.yaml`` really go unstable? The study as a user runs it (Ray Tune +
Optuna, ``sampler: random``), once per seed, and what share of its trials ended how.

Per seed: trials; unstable (instability score >= 0.3, or diverged), split into diverged,
stalled (the run learned too little) and the rest; stable and feasible (score < 0.3 and every
constraint met); the size of the study's Pareto front over its objectives (instability, cost to
target, validation loss) and over (instability, cost) alone; the study's wall time from
``Study.run()`` to its return, probe and cost calibration included.

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_stress_study.py [--seeds 0 1 2]
        [--trials 16] [--study studies/stress.yaml]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

UNSTABLE_SCORE = 0.3


def run_seed(study_file: Path, root: Path, seed: int, trials: int) -> dict:
    """One study run; the share of its trials in each outcome, and its fronts."""
    from policies.selection import pareto_indices
    from search.spec import StudySpec
    from search.study import Study

    values = yaml.safe_load(study_file.read_text())
    values["name"] = f"stress-seed{seed}"
    values["storage"] = str(root)
    values.setdefault("search", {}).update(seed=seed, num_trials=trials, sampler="random")
    spec = StudySpec.from_dict(values)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Tune's banners; stdout keeps the table
        result = Study(spec).run()
    seconds = time.perf_counter() - started
    table = result.trials
    diverged = table["diverged"] >= 1
    unstable = diverged | (table["instability_score"] >= UNSTABLE_SCORE)
    stalled = table.get("stalled", 0.0) >= 1
    feasible = table["feasible"]
    cost = spec.objectives.cost
    points = table.loc[feasible, ["instability_score", cost]].to_numpy().tolist()
    details = ["settings", "instability_score", cost, "val_loss", "val_accuracy", "feasible"]
    print(table[[*details, "diverged", "stalled", "on_front"]].to_string(), file=sys.stderr)
    return {
        "seed": seed,
        "trials": len(table),
        "unstable": float(unstable.mean()),
        "diverged": float(diverged.mean()),
        "stalled": float((stalled & ~diverged).mean()),
        "stable_feasible": float((feasible & ~unstable).mean()),
        "front": int(table["on_front"].sum()),
        "front_2d": len(pareto_indices(points)) if points else 0,
        "winner": result.winner_reason,
        "seconds": seconds,
    }


def print_table(rows: list[dict]) -> None:
    print(
        "| seed | trials | unstable (score ≥ 0.3 or diverged) | of which diverged | "
        "of which stalled | stable + feasible | front (study objectives) | "
        "front (instability, cost) | study wall time |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['seed']} | {row['trials']} | {row['unstable']:.0%} | {row['diverged']:.0%} "
            f"| {row['stalled']:.0%} | {row['stable_feasible']:.0%} | {row['front']} | "
            f"{row['front_2d']} | {row['seconds']:.0f} s |"
        )
    for row in rows:
        print(f"\nseed {row['seed']} winner: {row['winner']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--study", type=Path, default=Path("studies/stress.yaml"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-stress-") as tmp:
        ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
        try:
            for seed in args.seeds:
                rows.append(run_seed(args.study.resolve(), Path(tmp), seed, args.trials))
        finally:
            ray.shutdown()
    load = os.getloadavg()
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end; "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )
    print_table(rows)


if __name__ == "__main__":
    main()
