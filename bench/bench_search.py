"""Sampler comparison on the stress workload: how much of the front TPE, GP and random search
find for a budget of trials, and what divergence stopping saves.

The study is ``studies/stress.yaml`` (its data, model, space, objectives and constraints). To
fit many runs on 2 cores this benchmark drives Optuna's ask/tell loop itself, with the same
pieces a Ray-backed study uses: the probe's clip ranges (``search.probe``), the calibrated
per-step costs (``search.cost_calibration``), the define-by-run space (``search.space``), the
study's samplers (``search.optuna_wiring.build_sampler``), objective and constraint values
(``objective_names``, ``constraint_values``, recorded with ``Trial.set_constraint``) and
in-process training (``train_loops.worker.train_in_process``, which stops a diverged run). Only
Ray Tune is left out; ``bench/bench_stress_study.py`` runs the study through Ray.

Per run (sampler x seed, interleaved): the hypervolume of the feasible trials after each trial,
in the objectives normalised to a fixed box: instability (already in [0, 1]), cost divided by
the most expensive planned run (max calibrated step cost x max_steps), validation loss divided
by ln(classes) (a model at chance); reference point 1 in each. Also the 2-D hypervolume of
(instability, cost) alone.

Divergence stopping: a diverged trial stops at step s of its planned S; had it run on, it
would have taken S steps at its own measured time per step. Saved share = saved / (taken +
saved), over the diverged trials and over all trials.

Winner vs a common default: each run's winner (the study's selection policy over its feasible
trials) beside norm clipping at 1.0, fp32, no activation checkpointing and the spec's default
learning rate, optimizer and warm-up, trained with the same seed.

Usage (each seed is one job; ``--aggregate`` prints the tables from the saved results)::

    .venv/bin/python bench/bench_search.py --seeds 0 --out /tmp/search.jsonl
    .venv/bin/python bench/bench_search.py --aggregate --out /tmp/search.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

STUDY = Path(__file__).resolve().parents[1] / "studies" / "stress.yaml"
SAMPLERS = ("tpe", "gp", "random")


class Workload:
    """The stress study prepared once: base config, probe ranges, calibrated step costs."""

    def __init__(self, study: Path, root: Path) -> None:
        from search.cost_calibration import load_or_calibrate
        from search.probe import load_or_probe
        from search.space import ResolvedSpace
        from search.spec import StudySpec
        from train_loops.data import prepare_dataset

        self.spec = StudySpec.from_yaml(study)
        root.mkdir(parents=True, exist_ok=True)
        dataset = prepare_dataset(self.spec.data.to_data_spec(), root / "data")
        self.base = self.spec.train_config(dataset.root)
        probe = load_or_probe(root, self.base, self.spec)
        self.calibration = load_or_calibrate(root, self.spec, self.base)
        norm_range, value_range = probe.ranges()
        self.space = ResolvedSpace(
            self.spec.search.space, max_norm=norm_range, clip_value=value_range
        )
        self.classes = dataset.num_classes
        price = self.base.price_per_worker_hour / 3600.0
        steps = self.base.max_steps or 1
        self.cost_scale = max(self.calibration.step_seconds.values()) * steps * price

    def train(self, config: Any) -> tuple[dict[str, float], float]:
        from train_loops.worker import train_in_process

        started = time.perf_counter()
        metrics = train_in_process(self.calibration.apply(config), lambda m, d: None)
        return metrics, time.perf_counter() - started

    def normalised(self, metrics: dict[str, float]) -> list[float]:
        from search.optuna_wiring import objective_names

        scales = {
            "instability_score": 1.0,
            self.spec.objectives.cost: self.cost_scale,
            "val_loss": math.log(self.classes),
        }
        return [metrics[name] / scales[name] for name in objective_names(self.spec)]


def run_search(workload: Workload, sampler: str, seed: int, trials: int) -> dict[str, Any]:
    """One ask/tell search; per trial its metrics, constraints and seconds."""
    import optuna

    from search.optuna_wiring import (
        build_sampler,
        constraint_names,
        constraint_values,
        objective_names,
    )
    from search.space import trial_train_config

    values = workload.spec.model_dump()
    values["search"].update(sampler=sampler, seed=seed, num_trials=trials)
    spec = type(workload.spec).model_validate(values)
    names = objective_names(spec)
    study = optuna.create_study(directions=["minimize"] * len(names), sampler=build_sampler(spec))
    rows, started = [], time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        workload.space(trial)
        config = trial_train_config(workload.base, trial.params).replace(seed=seed)
        metrics, seconds = workload.train(config)
        constraints = constraint_values(spec, metrics)
        for name, value in zip(constraint_names(spec), constraints, strict=True):
            trial.set_constraint(name, value)
        study.tell(trial, [metrics[name] for name in names])
        rows.append(
            {
                "params": trial.params,
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
                "feasible": all(value <= 0 for value in constraints),
                "seconds": seconds,
                "normalised": workload.normalised(metrics),
            }
        )
    return {
        "sampler": sampler,
        "seed": seed,
        "trials": rows,
        "search_seconds": time.perf_counter() - started,
        "winner": winner(spec, rows),
    }


def winner(spec: Any, rows: list[dict]) -> dict | None:
    """The study's selection policy over the feasible trials (``search.study.select_winner``)."""
    import pandas as pd

    from search.study import select_winner

    feasible = [
        {"trial_id": str(i), **row["metrics"]} for i, row in enumerate(rows) if row["feasible"]
    ]
    if not feasible:
        return None
    chosen = select_winner(spec, pd.DataFrame(feasible))
    return {"params": rows[int(chosen.key)]["params"], **rows[int(chosen.key)]["metrics"]}


def run_default(workload: Workload, seed: int) -> dict[str, float]:
    """Norm clipping at 1.0, fp32, no activation checkpointing, the spec's defaults otherwise."""
    config = workload.base.replace(
        clipping={"method": "norm", "max_norm": 1.0},
        precision="fp32",
        activation_checkpointing=0,
        seed=seed,
    )
    from search.optuna_wiring import constraint_values

    metrics, seconds = workload.train(config)
    feasible = all(value <= 0 for value in constraint_values(workload.spec, metrics))
    return {**metrics, "seconds": seconds, "feasible": int(feasible)}


def hypervolume(points: list[list[float]]) -> float:
    """Hypervolume of ``points`` (minimised) against the reference point 1 in each axis."""
    from optuna._hypervolume import compute_hypervolume

    inside = np.array([p for p in points if all(v < 1.0 for v in p)], dtype=float)
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, np.ones(inside.shape[1])))


def hypervolume_curve(run: dict, dims: int | None = None) -> list[float]:
    """Hypervolume of the feasible trials after each trial (first ``dims`` objectives)."""
    curve, feasible = [], []
    for row in run["trials"]:
        if row["feasible"]:
            feasible.append(row["normalised"][:dims])
        curve.append(hypervolume(feasible))
    return curve


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(half)


def trials_to_reach(curve: list[float], target: float) -> int | None:
    return next((index + 1 for index, value in enumerate(curve) if value >= target - 1e-12), None)


def print_tables(runs: list[dict], defaults: list[dict]) -> None:
    samplers = list(dict.fromkeys(run["sampler"] for run in runs))
    curves = {id(run): hypervolume_curve(run) for run in runs}
    curves_2d = {id(run): hypervolume_curve(run, dims=2) for run in runs}
    random_final = {run["seed"]: curves[id(run)][-1] for run in runs if run["sampler"] == "random"}
    mean_random = statistics.fmean(random_final.values()) if random_final else float("nan")
    print(
        "| sampler | seeds | trials | hypervolume (mean ± 95 % CI) | 2-D (instability, cost) "
        "| feasible trials | trials to random's final HV (mean curve) | per seed (median) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for sampler in samplers:
        mine = [run for run in runs if run["sampler"] == sampler]
        finals = [curves[id(run)][-1] for run in mine]
        finals_2d = [curves_2d[id(run)][-1] for run in mine]
        mean, half = interval(finals)
        mean_2d, half_2d = interval(finals_2d)
        mean_curve = np.mean([curves[id(run)] for run in mine], axis=0).tolist()
        reach = trials_to_reach(mean_curve, mean_random)
        per_seed = [
            trials_to_reach(curves[id(run)], random_final[run["seed"]])
            for run in mine
            if run["seed"] in random_final
        ]
        reached = [n for n in per_seed if n is not None]
        feasible = statistics.fmean(sum(r["feasible"] for r in run["trials"]) for run in mine)
        print(
            f"| {sampler} | {len(mine)} | {len(mine[0]['trials'])} | {mean:.4f} ± {half:.4f} | "
            f"{mean_2d:.4f} ± {half_2d:.4f} | {feasible:.1f} | "
            f"{reach if reach is not None else 'not reached'} | "
            f"{statistics.median(reached) if reached else '-'} "
            f"({len(reached)}/{len(per_seed)} seeds reach) |"
        )
    print("\nPer seed, final hypervolume:\n")
    print("| seed | " + " | ".join(samplers) + " |")
    print("|---:|" + "---:|" * len(samplers))
    for seed in sorted({run["seed"] for run in runs}):
        cells = [
            f"{curves[id(run)][-1]:.4f}"
            for sampler in samplers
            for run in runs
            if run["sampler"] == sampler and run["seed"] == seed
        ]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    print_stopping(runs)
    print_winners(runs, defaults)


def print_stopping(runs: list[dict]) -> None:
    taken = saved = all_taken = 0.0
    diverged = total = 0
    for run in runs:
        for row in run["trials"]:
            metrics, seconds = row["metrics"], row["seconds"]
            all_taken += seconds
            total += 1
            if metrics.get("diverged", 0.0) >= 1 and metrics["step"] > 0:
                diverged += 1
                per_step = seconds / metrics["step"]
                taken += seconds
                saved += (metrics["steps_planned"] - metrics["step"]) * per_step
    print(
        f"\nDivergence stopping: {diverged} of {total} trials diverged and stopped early. They "
        f"took {taken:.0f} s; run to the end they would have taken {taken + saved:.0f} s: "
        f"**{saved / max(taken + saved, 1e-9):.0%} of the diverged trials' time saved**, "
        f"{saved / max(all_taken + saved, 1e-9):.0%} of all trials' time."
    )


def print_winners(runs: list[dict], defaults: list[dict]) -> None:
    print(
        "\n| setting | runs | instability (mean) | cost to target (mean, $) | val accuracy | "
        "test accuracy | feasible |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")

    def line(label: str, results: list[dict]) -> None:
        if not results:
            print(f"| {label} | 0 | - | - | - | - | - |")
            return
        keys = ("instability_score", "cost_to_target_dollars", "val_accuracy", "test_accuracy")
        mean = {k: statistics.fmean(float(r[k]) for r in results) for k in keys}
        print(
            f"| {label} | {len(results)} | {mean['instability_score']:.3f} | "
            f"{mean['cost_to_target_dollars']:.3g} | {mean['val_accuracy']:.3f} | "
            f"{mean['test_accuracy']:.3f} | {sum(r.get('feasible', 1) for r in results)} |"
        )

    line("common default (norm 1.0, fp32, no AC, spec lr)", defaults)
    for sampler in dict.fromkeys(run["sampler"] for run in runs):
        winners = [run["winner"] for run in runs if run["sampler"] == sampler and run["winner"]]
        line(f"{sampler} winner", [{**w, "feasible": 1} for w in winners])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--work", type=Path, default=Path("/tmp/trimtab-bench-search"))
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--aggregate", action="store_true", help="only print the tables")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # divergence warnings of the unstable trials
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)  # one CPU per trial, as a Ray trial has
    if not args.aggregate:
        workload = Workload(args.study, args.work)
        for seed in args.seeds:
            records = [{"kind": "default", "seed": seed, **run_default(workload, seed)}]
            for sampler in args.samplers:
                records.append({"kind": "run", **run_search(workload, sampler, seed, args.trials)})
            with args.out.open("a") as out:
                for record in records:
                    out.write(json.dumps(record) + "\n")
            print(f"seed {seed} done", flush=True)
    records = [json.loads(line) for line in args.out.read_text().splitlines()]
    runs = [r for r in records if r["kind"] == "run"]
    defaults = [r for r in records if r["kind"] == "default"]
    load = os.getloadavg()
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, load {load[0]:.1f}; "
        f"{len(runs)} runs from {args.out}\n"
    )
    print_tables(runs, defaults)


if __name__ == "__main__":
    main()
