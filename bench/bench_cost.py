"""Is the cost objective a property of the configuration, or of the machine's load?

The same 8-trial digits study (``sampler: random``, fixed seed, so both runs try the same eight
configurations) runs twice, each in its own storage directory, so each run calibrates its own
per-step costs from scratch. The second run shares the machine with a CPU hog (``--hog N``
busy-loop processes, default 1: half of a 2-core machine) — the "machine's mood" a cost must
not follow. For
every configuration the table prints, side by side:

* ``cost_dollars`` — the calibrated cost (steps x calibrated per-step cost x price), and
* ``wall_cost_dollars`` — what the cost used to be (wall-clock seconds x price),

for both runs, their relative difference, and at the bottom the largest relative difference
and the Spearman rank correlation between the runs for each cost. The goal: calibrated cost
within 5 % per configuration and Spearman >= 0.95.

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_cost.py [--trials 8] [--hog 1]

About 4 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


@contextlib.contextmanager
def cpu_hog(count: int, seconds: float = 1800.0):
    """``count`` busy-looping processes until the block ends."""
    processes = []
    if count:
        for _ in range(count):
            process = multiprocessing.Process(target=_spin, args=(time.time() + seconds,))
            process.start()
            processes.append(process)
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
            process.join()


def run_study(storage: Path, trials: int) -> tuple[pd.DataFrame, float]:
    from search.spec import StudySpec
    from search.study import Study

    spec = StudySpec(
        name="cost",
        storage=str(storage),
        training={"epochs": 2, "report_every_steps": 20, "checkpoint_every_steps": 40},
        search={
            "num_trials": trials,
            "max_concurrent_trials": 2,
            "sampler": "random",
            "seed": 7,
            "probe": {"steps": 20},
        },
    )
    started = time.perf_counter()
    result = Study(spec).run()
    table = result.trials.set_index("settings")
    return table, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--hog", type=int, default=1, help="busy processes during run B (0: none)")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as root:
        table_a, seconds_a = run_study(Path(root) / "a", args.trials)
        with cpu_hog(args.hog):
            table_b, seconds_b = run_study(Path(root) / "b", args.trials)
    ray.shutdown()

    common = table_a.index.intersection(table_b.index)
    rows = []
    for settings in common:
        a, b = table_a.loc[settings], table_b.loc[settings]
        rows.append(
            {
                "settings": settings,
                "steps": int(a["step"]),
                "cost A": a["cost_dollars"],
                "cost B": b["cost_dollars"],
                "cost diff": b["cost_dollars"] / a["cost_dollars"] - 1,
                "wall cost A": a["wall_cost_dollars"],
                "wall cost B": b["wall_cost_dollars"],
                "wall diff": b["wall_cost_dollars"] / a["wall_cost_dollars"] - 1,
            }
        )
    frame = pd.DataFrame(rows).sort_values("cost A")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(
        f"run A: {seconds_a:.0f} s, quiet; run B: {seconds_b:.0f} s, "
        f"{f'beside {args.hog} busy-loop process(es)' if args.hog else 'quiet'}\n"
    )
    print(
        "| settings | steps | cost A ($) | cost B ($) | diff "
        "| wall cost A ($) | wall cost B ($) | diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in frame.itertuples(index=False):
        print(
            f"| {row.settings} | {row.steps} | {row[2]:.3e} | {row[3]:.3e} | {row[4]:+.1%} "
            f"| {row[5]:.3e} | {row[6]:.3e} | {row[7]:+.1%} |"
        )
    calibrated_rho = spearmanr(frame["cost A"], frame["cost B"]).statistic
    wall_rho = spearmanr(frame["wall cost A"], frame["wall cost B"]).statistic
    calibrated_max = frame["cost diff"].abs().max()
    wall_max = frame["wall diff"].abs().max()
    print("\n| cost | max abs diff | Spearman A vs B |\n|---|---:|---:|")
    print(f"| calibrated (cost_dollars) | {calibrated_max:.1%} | {calibrated_rho:.3f} |")
    print(f"| wall-clock (wall_cost_dollars) | {wall_max:.1%} | {wall_rho:.3f} |")
    print(f"\n{len(common)} of {args.trials} configurations in both runs")


if __name__ == "__main__":
    main()
