"""Training throughput of our loop: plain PyTorch vs ``train()`` in-process vs Ray Train.

Measures, side by side in one run, for the digits set and a 1.07M-parameter residual MLP
(``ModelSpec("mlp", {"hidden": 256, "depth": 4})``), fp32, no clipping, batch 64:

- steady-state samples/s of a hand-written minimal PyTorch loop (AdamW, cross-entropy, the
  same model, batch size and data tensors), of our ``train()`` run in-process
  (``train_in_process``), and of ``train()`` inside a 1-worker ``TorchTrainer`` built by
  ``build_trainer`` (target: ≥ 0.95× the plain loop);
- the same ``TorchTrainer`` with 2 workers (gloo, same global batch: 32 rows per worker);
- once, the 1-worker ``TorchTrainer`` at the study's default ``report_every_steps=20``;
- activation checkpointing off / every 2nd block / every block: the ``activation_bytes`` the
  loop reports (``SavedTensorBytes``) and the time of the loop's own ``train_step``.

Steady state: ``train()`` reports every ``--window`` steps; the first report ends the warm-up
and each later pair of reports is one window, ``window × batch / Δwall_seconds``. That leaves
out Ray's fixed start-up (worker group, gloo init), the first steps and the final test pass.
Each report evaluates the validation split once, inside the window it closes; that pass is
timed here (same model, one thread) and subtracted. The plain loop times the same windows.
Ray Train V2 drains one report per worker per controller poll (every 2 s) and blocks the next
``ray.train.report`` until then, so windows must last well over 2 s; the output names the
shortest one.

Paired windows: for ``train()`` in-process and in a 1-worker ``TorchTrainer``, every report
first runs one window of the plain loop (same steps, its own model and optimizer kept between
windows) in the same process and thread, before the report is handed on (``paired``). Each
loop window is then compared with the plain window right after it, so both see the same
moment of a noisy machine; time spent in ``ray.train.report`` counts for the loop. The
unpaired rows leave those plain windows out of the loop's windows.

The machine is shared, so besides wall-clock samples/s every window also records the CPU
time of the training thread (``time.thread_time()``; in a Ray worker, the thread that runs
``train()``, read by a wrapper around ``ray.train.report`` in this file's per-worker function,
which otherwise calls our ``train_worker`` unchanged). Samples per CPU-second (summed over
workers) barely move with other people's load; wall-clock samples/s do. Every worker and this
process run torch on one thread (a 1-CPU Ray worker gets ``OMP_NUM_THREADS=1``). The variants
take turns: each of ``--repeats`` rounds runs plain, in-process, Ray 1 worker, Ray 2 workers;
every figure is the median over all windows of a variant, ratios are also given per round.

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_train.py [--repeats 2] [--window 150]
        [--windows 4] [--ac-rounds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

from policies import (
    ActivationCheckpointing,
    StabilityConfig,
    StabilityDetector,
    build_clip_policy,
    build_precision,
)
from train_loops.batches import evaluate
from train_loops.config import TrainConfig
from train_loops.data import DataSpec, PreparedDataset, prepare_dataset
from train_loops.loop import WorkerContext, read_step_values, train_step, warmup_cosine
from train_loops.models import ModelSpec, build_model, fit_standardization
from train_loops.worker import arrow_batches, train_in_process, train_worker

MODEL = ModelSpec("mlp", {"hidden": 256, "depth": 4})
BATCH = 64
LEARNING_RATE = 1e-3
CPU_KEY = "bench_thread_cpu_seconds"
PLAIN = "plain PyTorch loop"
IN_PROCESS = "train() in-process"
RAY_ONE = "train() in TorchTrainer, 1 worker"
RAY_TWO = "train() in TorchTrainer, 2 workers"
VARIANTS = (PLAIN, IN_PROCESS, RAY_ONE, RAY_TWO)
PAIRED_KEY = "bench_paired"
PAIRED_LOOP_WALL = "bench_paired_loop_wall"
PAIRED_LOOP_CPU = "bench_paired_loop_cpu"
PAIRED_PLAIN_WALL = "bench_paired_plain_wall"
PAIRED_PLAIN_CPU = "bench_paired_plain_cpu"
DEFAULT_REPORT_EVERY = TrainConfig.__dataclass_fields__["report_every_steps"].default


@dataclass(frozen=True)
class Window:
    samples: int
    wall: float
    """Seconds of wall clock."""
    cpu: float
    """CPU seconds of the training thread(s), summed over workers."""


@dataclass
class Variant:
    name: str
    rounds: list[list[Window]] = field(default_factory=list)
    fixed_seconds: list[float] = field(default_factory=list)
    """Ray Train only: seconds of each ``fit()`` outside the loop's own wall clock."""
    pairs: list[tuple[Window, Window]] = field(default_factory=list)
    """In-process and 1-worker Ray Train: each loop window with the plain window after it."""

    def rates(self, clock: str) -> list[float]:
        return [w.samples / getattr(w, clock) for r in self.rounds for w in r]

    def round_medians(self, clock: str) -> list[float]:
        return [statistics.median(w.samples / getattr(w, clock) for w in r) for r in self.rounds]


def base_config(dataset: PreparedDataset, window: int, windows: int) -> TrainConfig:
    return TrainConfig(
        dataset_dir=str(dataset.root),
        model=MODEL,
        epochs=100_000,  # max_steps ends the run
        max_steps=window * (windows + 1),
        global_batch_size=BATCH,
        learning_rate=LEARNING_RATE,
        clipping={"method": "none"},
        precision="fp32",
        report_every_steps=window,
        checkpoint_every_steps=10**9,  # only the final report carries a checkpoint
    )


def windows_from_reports(
    reports: list[dict[str, float]], config: TrainConfig, evaluation: Window
) -> list[Window]:
    """One window per pair of consecutive reports, the validation pass taken out."""
    reports = sorted(reports, key=lambda r: r["step"])
    return [
        Window(
            samples=int(after["step"] - before["step"]) * config.global_batch_size,
            wall=after["wall_seconds"] - before["wall_seconds"] - evaluation.wall,
            cpu=(after[CPU_KEY] - before[CPU_KEY] - evaluation.cpu) * config.num_workers,
        )
        for before, after in itertools.pairwise(reports)
    ]


class PlainLoop:
    """The minimal loop: same model, AdamW, cross-entropy, same rows per step, no extras;
    stepped a window at a time, its state kept between windows."""

    def __init__(self, dataset: PreparedDataset, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.features, self.labels = (torch.from_numpy(a) for a in dataset.load("train"))
        self.model = build_model(MODEL, dataset.num_features, dataset.num_classes)
        fit_standardization(self.model, self.features.numpy())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE)
        self.model.train()
        self.stream = self.batches()

    def batches(self):
        per_epoch = len(self.labels) // BATCH
        while True:  # a fresh permutation every epoch, the ragged tail dropped
            order = torch.randperm(len(self.labels))
            for index in range(per_epoch):
                rows = order[index * BATCH : (index + 1) * BATCH]
                yield self.features[rows], self.labels[rows]

    def run(self, steps: int) -> Window:
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            x, y = next(self.stream)
            loss = functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return Window(steps * BATCH, time.perf_counter() - wall, time.thread_time() - cpu)


def plain_loop(dataset: PreparedDataset, window: int, windows: int, seed: int = 0) -> list[Window]:
    """The plain loop on its own: a warm-up window, then ``windows`` timed windows."""
    loop = PlainLoop(dataset, seed)
    loop.run(window)
    return [loop.run(window) for _ in range(windows)]


def paired(forward: Any, dataset_dir: str, window: int) -> Any:
    """Wrap a report function so that every report first runs one window of the plain loop,
    in the same process and thread, and adds to the metrics how long that took and how long
    ``train()`` ran since the previous plain window ended. The time spent in ``forward`` (for
    Ray Train, ``ray.train.report``, which may wait for the controller) counts for ``train()``.
    """
    plain: PlainLoop | None = None
    mark: tuple[float, float] | None = None

    def report(metrics: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal plain, mark
        now = (time.perf_counter(), time.thread_time())
        extra = {}
        if mark is not None:
            extra = {PAIRED_LOOP_WALL: now[0] - mark[0], PAIRED_LOOP_CPU: now[1] - mark[1]}
        if plain is None:
            plain = PlainLoop(PreparedDataset.open(dataset_dir))
            plain.run(window // 5)  # warm-up
        measured = plain.run(window)
        extra |= {PAIRED_PLAIN_WALL: measured.wall, PAIRED_PLAIN_CPU: measured.cpu}
        mark = (time.perf_counter(), time.thread_time())
        return forward({**metrics, **extra}, *args, **kwargs)

    return report


def pairs_from_reports(
    reports: list[dict[str, float]], evaluation: Window
) -> list[tuple[Window, Window]]:
    """(train() window, plain window) pairs: each loop window and the plain window right after
    it; the validation pass taken out of the loop's window."""
    reports = sorted(reports, key=lambda r: r["step"])
    result = []
    for before, after in itertools.pairwise(reports):
        if PAIRED_LOOP_WALL not in after:
            continue
        samples = int(after["step"] - before["step"]) * BATCH
        ours = Window(
            samples,
            after[PAIRED_LOOP_WALL] - evaluation.wall,
            after[PAIRED_LOOP_CPU] - evaluation.cpu,
        )
        plain = Window(samples, after[PAIRED_PLAIN_WALL], after[PAIRED_PLAIN_CPU])
        result.append((ours, plain))
    return result


def evaluation_cost(dataset: PreparedDataset, repeats: int = 20) -> Window:
    """Median wall and CPU time of the validation pass each report runs."""
    model = build_model(MODEL, dataset.num_features, dataset.num_classes)
    val_x, val_y = (torch.from_numpy(a) for a in dataset.load("validation"))
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.thread_time()
        evaluate(model, val_x, val_y, contextlib.nullcontext)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    return Window(len(val_y), statistics.median(walls), statistics.median(cpus))


Pairs = list[tuple[Window, Window]]


def in_process(config: TrainConfig, evaluation: Window) -> tuple[list[Window], Pairs]:
    """``train_in_process`` with a plain-loop window after every report: its own windows
    (plain time left out) and the (ours, plain) pairs."""
    reports: list[dict[str, float]] = []

    def collect(metrics: dict[str, float], directory: Path | None) -> None:
        reports.append(dict(metrics))

    train_in_process(config, paired(collect, config.dataset_dir, config.report_every_steps))
    pairs = pairs_from_reports(reports, evaluation)
    return [ours for ours, _ in pairs], pairs


def timed_train_worker(config_dict: dict[str, Any]) -> None:
    """Our ``train_worker``, with the training thread's CPU time added to every report and,
    when the config says so (one worker only), a plain-loop window run before every report
    (:func:`paired`)."""
    import ray.train

    report = ray.train.report

    def report_with_cpu(metrics: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        report({**metrics, CPU_KEY: time.thread_time()}, *args, **kwargs)

    config_dict = dict(config_dict)
    if config_dict.pop(PAIRED_KEY):
        window = config_dict["report_every_steps"]
        ray.train.report = paired(report_with_cpu, config_dict["dataset_dir"], window)
    else:
        ray.train.report = report_with_cpu  # train_worker looks it up at each call
    try:
        train_worker(config_dict)
    finally:
        ray.train.report = report


def ray_train(
    config: TrainConfig, storage: Path, name: str, evaluation: Window, pair: bool = False
) -> tuple[list[Window], float, Pairs]:
    """Fit the trainer ``build_trainer(config)`` describes (per-worker function wrapped, see
    :func:`timed_train_worker`); rank 0's reports come back through a controller callback,
    since Ray Train V2 keeps only the metrics of checkpointed reports in its ``Result``.
    Returns the loop's windows, the seconds of ``fit()`` outside the loop and, with one
    worker and ``pair``, the (ours, plain) pairs (the loop's windows then leave the plain
    windows out)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from train_loops.trainer import build_trainer

    class ReportLog(ray.train.UserCallback):
        def __init__(self, path: str) -> None:
            self.path = path

        def after_report(self, run_context, metrics, checkpoint) -> None:
            with open(self.path, "a") as log:
                log.write(json.dumps(metrics[0]) + "\n")

    log_path = storage / f"{name}.jsonl"
    ours = build_trainer(config, storage_path=storage, name=name)
    trainer = TorchTrainer(
        timed_train_worker,
        train_loop_config={**ours.train_loop_config, PAIRED_KEY: pair},
        scaling_config=ours.scaling_config,
        run_config=dataclasses.replace(ours.run_config, callbacks=[ReportLog(str(log_path))]),
        torch_config=ours.backend_config,
        datasets=ours.datasets,
    )
    started = time.perf_counter()
    trainer.fit()
    fit_seconds = time.perf_counter() - started
    reports = [json.loads(line) for line in log_path.read_text().splitlines()]
    fixed = fit_seconds - max(r["wall_seconds"] for r in reports)
    pairs = pairs_from_reports(reports, evaluation)
    if pairs:
        return [ours for ours, _ in pairs], fixed, pairs
    return windows_from_reports(reports, config, evaluation), fixed, pairs


def step_costs(
    dataset: PreparedDataset, config: TrainConfig, rounds: int, steps: int
) -> dict[str, float]:
    """Median CPU ms per step of the plain loop's step and of the loop's per-step work, taking
    turns every ``steps`` steps in this thread. The loop's step is put together from the
    functions ``train()`` calls each step: the next batch from ``ArrowShardBatches``,
    ``train_step`` (autocast, backward, unscale, clip policy ``none``, which measures the
    gradient norm, optimizer step, ``zero_grad``), the LR scheduler, ``read_step_values`` and
    the stability detector; the per-report work (validation, metrics) is not in it."""
    plain = PlainLoop(dataset)
    runner = StepRunner(dataset, 0, dataset.load("train")[0])
    scheduler = torch.optim.lr_scheduler.LambdaLR(runner.optimizer, warmup_cosine(10, 10**6))
    detector = StabilityDetector(StabilityConfig())
    source = arrow_batches(config, WorkerContext())

    def batch_stream():
        for epoch in itertools.count():
            yield from source.epoch(epoch)

    stream = batch_stream()

    def ours(count: int) -> float:
        started = time.thread_time()
        for _ in range(count):
            features, labels = next(stream)
            outcome = train_step(
                runner.model, features, labels, runner.optimizer, runner.precision, runner.clip
            )
            scheduler.step()
            loss, grad_norm, clipped, _ = read_step_values(outcome.loss.float(), outcome)
            detector.update(
                loss=loss, grad_norm=grad_norm, clipped=clipped > 0, skipped=not outcome.stepped
            )
        return time.thread_time() - started

    def theirs(count: int) -> float:
        return plain.run(count).cpu

    ours(steps), theirs(steps)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(rounds):
        times["ours"].append(ours(steps) / steps * 1e3)
        times["plain"].append(theirs(steps) / steps * 1e3)
    ratios = [p / o for p, o in zip(times["plain"], times["ours"], strict=True)]
    return {
        "plain_ms": statistics.median(times["plain"]),
        "ours_ms": statistics.median(times["ours"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


class StepRunner:
    """A model built as ``train()`` builds it, stepped with the loop's own ``train_step``."""

    def __init__(self, dataset: PreparedDataset, every: int, train_features: Any) -> None:
        torch.manual_seed(0)
        self.model = build_model(MODEL, dataset.num_features, dataset.num_classes)
        fit_standardization(self.model, train_features)
        if every:
            ActivationCheckpointing(every=every).apply(self.model.blocks)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE)
        self.precision = build_precision("fp32", torch.device("cpu"))
        self.clip = build_clip_policy({"method": "none"}, self.model)

    def run(self, batches: list, steps: int) -> Window:
        wall, cpu = time.perf_counter(), time.thread_time()
        for index in range(steps):
            x, y = batches[index % len(batches)]
            train_step(self.model, x, y, self.optimizer, self.precision, self.clip)
        return Window(steps, time.perf_counter() - wall, time.thread_time() - cpu)

    def non_weight_saved_bytes(self, features: torch.Tensor) -> int:
        """Like ``SavedTensorBytes`` but leaving out tensors that share a parameter's or
        buffer's storage (a Linear saves its weight for backward)."""
        owned = {t.untyped_storage().data_ptr() for t in self.model.state_dict().values()}
        seen: set[int] = set()
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            pointer = tensor.untyped_storage().data_ptr()
            if pointer not in owned and pointer not in seen:
                seen.add(pointer)
                total += tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            self.model(features).float().sum()
        return total


def activation_rows(
    dataset: PreparedDataset, config: TrainConfig, batch: int, rounds: int, steps: int
) -> list[tuple[int, int, int, float, float, float, float]]:
    """Per ``activation_checkpointing`` setting (0, 2, 1): reported bytes, bytes without saved
    weights, median wall and CPU ms/step and their ratios to off (settings take turns)."""
    features, labels = (torch.from_numpy(a) for a in dataset.load("train"))
    generator = torch.Generator().manual_seed(0)
    fixed_batches = []
    for _ in range(8):
        rows = torch.randperm(len(labels), generator=generator)[:batch]
        fixed_batches.append((features[rows], labels[rows]))
    settings = (0, 2, 1)
    reported, non_weight, runners = {}, {}, {}
    for every in settings:
        first: list[dict[str, float]] = []
        train_in_process(
            config.replace(activation_checkpointing=every, max_steps=1, global_batch_size=batch),
            lambda metrics, directory, out=first: out.append(dict(metrics)),
        )
        reported[every] = int(first[0]["activation_bytes"])
        runners[every] = StepRunner(dataset, every, features.numpy())
        non_weight[every] = runners[every].non_weight_saved_bytes(fixed_batches[0][0])
    for runner in runners.values():
        runner.run(fixed_batches, steps)  # warm-up
    timings: dict[int, list[Window]] = {every: [] for every in settings}
    for _ in range(rounds):
        for every, runner in runners.items():
            timings[every].append(runner.run(fixed_batches, steps))

    def per_step(every: int, clock: str) -> float:
        return statistics.median(getattr(w, clock) / w.samples for w in timings[every])

    return [
        (
            every,
            reported[every],
            non_weight[every],
            per_step(every, "wall") * 1e3,
            per_step(every, "wall") / per_step(0, "wall"),
            per_step(every, "cpu") * 1e3,
            per_step(every, "cpu") / per_step(0, "cpu"),
        )
        for every in settings
    ]


def ratio(numerator: Variant, denominator: Variant, clock: str) -> str:
    pooled = statistics.median(numerator.rates(clock)) / statistics.median(denominator.rates(clock))
    if len(numerator.rounds) != len(denominator.rounds):
        return f"{pooled:.3f}x"
    rounds = zip(numerator.round_medians(clock), denominator.round_medians(clock), strict=True)
    return f"{pooled:.3f}x ({', '.join(f'{a / b:.2f}' for a, b in rounds)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all four variants")
    parser.add_argument("--window", type=int, default=150, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=4, help="timed windows per run")
    parser.add_argument("--ac-rounds", type=int, default=8, help="activation-checkpointing turns")
    parser.add_argument("--step-rounds", type=int, default=30, help="per-step cost turns")
    parser.add_argument("--step-block", type=int, default=10, help="steps per turn")
    parser.add_argument("--ac-steps", type=int, default=8, help="steps per setting per turn")
    args = parser.parse_args()
    torch.set_num_threads(1)  # what a 1-CPU Ray worker gets
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        dataset = prepare_dataset(DataSpec(), root / "data")
        config = base_config(dataset, args.window, args.windows)
        evaluation = evaluation_cost(dataset)
        variants = {name: Variant(name) for name in VARIANTS}
        ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
        try:
            worker_threads = ray.get(
                ray.remote(num_cpus=1)(lambda: torch.get_num_threads()).remote()
            )
            for round_index in range(args.repeats):
                for name, variant in variants.items():
                    if name == PLAIN:
                        windows = plain_loop(dataset, args.window, args.windows)
                    elif name == IN_PROCESS:
                        windows, pairs = in_process(config, evaluation)
                        variant.pairs.extend(pairs)
                    else:
                        workers = 1 if name == RAY_ONE else 2
                        windows, fixed, pairs = ray_train(
                            config.replace(num_workers=workers),
                            root / "ray",
                            f"bench-{workers}w-{round_index}",
                            evaluation,
                            pair=workers == 1,
                        )
                        variant.fixed_seconds.append(fixed)
                        variant.pairs.extend(pairs)
                    variant.rounds.append(windows)
            # The study's default report cadence, once: a warm-up report and 5 windows.
            throttled = Variant(f"{RAY_ONE}, report_every_steps={DEFAULT_REPORT_EVERY} (once)")
            windows, fixed, _ = ray_train(
                config.replace(
                    report_every_steps=DEFAULT_REPORT_EVERY, max_steps=6 * DEFAULT_REPORT_EVERY
                ),
                root / "ray",
                "bench-1w-report20",
                evaluation,
            )
            throttled.rounds.append(windows)
            throttled.fixed_seconds.append(fixed)
        finally:
            ray.shutdown()
        steps = step_costs(dataset, config, args.step_rounds, args.step_block)
        ac = {
            batch: activation_rows(
                dataset, config, batch, args.ac_rounds, max(2, args.ac_steps * BATCH // batch)
            )
            for batch in (BATCH, 512)
        }
    total = time.perf_counter() - started

    model = build_model(MODEL, dataset.num_features, dataset.num_classes)
    parameters = sum(p.numel() for p in model.parameters())
    load = os.getloadavg()
    shortest = min(
        w.wall for v in (variants[RAY_ONE], variants[RAY_TWO]) for r in v.rounds for w in r
    )
    print(
        f"# {parameters:,}-parameter MLP (hidden 256, depth 4), digits, batch {BATCH}, fp32, "
        f"clipping none, torch {torch.__version__}; 1 thread here, {worker_threads} in a 1-CPU "
        f"Ray worker; {args.repeats} rounds x {args.windows} windows of {args.window} steps "
        f"(shortest Ray window {shortest:.1f} s); validation pass {evaluation.wall * 1e3:.1f} ms "
        f"wall / {evaluation.cpu * 1e3:.1f} ms CPU subtracted per window; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end; {total:.0f} s"
    )
    plain = variants[PLAIN]
    print()
    print(
        "| variant | samples/s (median) | min–max | vs plain (per round) | "
        "samples per CPU-second | vs plain, CPU (per round) | fit() outside loop |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant in [*variants.values(), throttled]:
        wall = variant.rates("wall")
        fixed = variant.fixed_seconds
        print(
            f"| {variant.name} | {statistics.median(wall):,.0f} | "
            f"{min(wall):,.0f}–{max(wall):,.0f} | {ratio(variant, plain, 'wall')} | "
            f"{statistics.median(variant.rates('cpu')):,.0f} | {ratio(variant, plain, 'cpu')} | "
            f"{f'{statistics.median(fixed):.1f} s' if fixed else '–'} |"
        )
    print()
    print(
        "Paired windows (a plain-loop window run in the same process and thread right after "
        "each loop window):"
    )
    print()
    print(
        "| variant | pairs | loop / plain samples/s (median) | min–max | "
        "loop / plain, CPU (median) | min–max |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in (IN_PROCESS, RAY_ONE):
        pairs = variants[name].pairs
        wall = [plain.wall / ours.wall for ours, plain in pairs]
        cpu = [plain.cpu / ours.cpu for ours, plain in pairs]
        print(
            f"| {name} | {len(pairs)} | {statistics.median(wall):.3f}x | "
            f"{min(wall):.2f}–{max(wall):.2f} | {statistics.median(cpu):.3f}x | "
            f"{min(cpu):.2f}–{max(cpu):.2f} |"
        )
    print()
    print(
        f"Per-step CPU cost, taking turns every {args.step_block} steps for "
        f"{args.step_rounds} rounds: plain step {steps['plain_ms']:.2f} ms, the loop's per-step "
        f"work {steps['ours_ms']:.2f} ms; plain / loop {steps['ratio']:.3f}x (median of "
        f"rounds, {steps['ratio_min']:.2f}–{steps['ratio_max']:.2f})"
    )
    one, two = variants[RAY_ONE], variants[RAY_TWO]
    print()
    print(
        f"2 workers vs 1 worker (TorchTrainer, same global batch): samples/s "
        f"{ratio(two, one, 'wall')}; samples per CPU-second {ratio(two, one, 'cpu')}"
    )
    print()
    print(
        "| activation_checkpointing | batch | activation_bytes (reported) | "
        "without saved weights | ms/step | vs off | CPU ms/step | vs off, CPU |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch, rows in ac.items():
        for every, reported, non_weight, wall_ms, wall_ratio, cpu_ms, cpu_ratio in rows:
            print(
                f"| {every} | {batch} | {reported:,} | {non_weight:,} | {wall_ms:.2f} | "
                f"{wall_ratio:.3f}x | {cpu_ms:.2f} | {cpu_ratio:.3f}x |"
            )


if __name__ == "__main__":
    main()
