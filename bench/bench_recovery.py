"""Spike recovery's price: per-step overhead of ``rewind`` (snapshots every 50 steps) next to
``none``, and the wall time one rewind costs.

Both variants run the loop's own ``train_step`` with norm clipping (``max_norm=1``), the
LR scheduler and the stability detector, exactly as ``train()`` does per step:

- ``none``: no gate (the plain clipped step);
- ``skip``: the verdict before each update (``SpikeRecovery.allows_update``), no snapshots;
- ``rewind(every=50)``: the verdict plus a host-memory snapshot of model, optimizer, LR
  schedule, loss scaler, clipping and detector state every 50 steps;
- ``none, 2nd copy``: ``none`` again in its own model, the control for what two identical
  variants differ by on this machine.

Turns are interleaved: each of ``--rounds`` rounds runs ``--block`` steps of each variant (in a
rotating order, each variant with its own model kept between turns); a variant's per-step time
is the median over rounds of its block's mean, the overhead the median of the per-round ratios
to ``none``. ``--block`` is a multiple of 50 so every turn pays its share of snapshots.

One rewind: the median time of ``SpikeRecovery.recover`` (restore the snapshot, counters, lower
the learning rate) over ``--rewinds`` repeats, next to the time the updates it undoes took (on
average ``every / 2`` steps) — that, not the restore, is what a rewind costs.

Two models: the digits MLP the tests use (``mlp`` default: 0.27M parameters) and a 4.2M-
parameter one (``hidden=512``), where a snapshot copies 3 x 17 MB (weights, Adam's two moments).

Usage::

    .venv/bin/python bench/bench_recovery.py [--rounds 12] [--block 100] [--rewinds 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from policies import (
    NoRecovery,
    RewindOnSpike,
    SkipSpikes,
    StabilityDetector,
    build_clip_policy,
    build_precision,
)
from train_loops.config import TrainConfig
from train_loops.data import DataSpec, prepare_dataset
from train_loops.loop import (
    WorkerContext,
    build_optimizer,
    read_step_values,
    train_step,
    warmup_cosine,
)
from train_loops.models import ModelSpec, build_model, fit_standardization
from train_loops.spike_recovery import SpikeRecovery, TrainingParts
from train_loops.worker import arrow_batches

VARIANTS = {
    "none": NoRecovery(),
    "skip": SkipSpikes(),
    "rewind(every=50)": RewindOnSpike(every=50),
    "none, 2nd copy": NoRecovery(),
}
"""``none, 2nd copy`` is a control: the same plain step in its own model and optimizer; its
ratio to ``none`` is what two identical variants differ by here (memory placement, noise)."""


class Runner:
    """One variant's model, optimizer, scheduler, detector and recovery, kept across turns."""

    def __init__(self, config: TrainConfig, policy, batches: list) -> None:
        dataset = prepare_dataset(DataSpec(), Path(config.dataset_dir))
        torch.manual_seed(0)
        model = build_model(config.model, dataset.num_features, dataset.num_classes)
        fit_standardization(model, dataset.load("train")[0])
        optimizer = build_optimizer(model, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(20, 10**6))
        self.precision = build_precision("fp32", "cpu")
        self.clip = build_clip_policy(config.clipping, model)
        self.detector = StabilityDetector(config.stability)
        self.parts = TrainingParts(
            model, optimizer, scheduler, self.precision, self.clip, self.detector
        )
        self.recovery = SpikeRecovery(policy, self.parts)
        self.gate = self.recovery.allows_update if self.recovery.judges_steps else None
        self.batches = batches
        self.step = 0
        self.recovery.take_snapshot_if_due(0)

    def run(self, steps: int) -> float:
        """``steps`` steps as ``train()`` takes them; seconds per step."""
        parts, context = self.parts, WorkerContext()
        started = time.perf_counter()
        for _ in range(steps):
            features, labels = self.batches[self.step % len(self.batches)]
            outcome = train_step(
                parts.model, features, labels, parts.optimizer, self.precision, self.clip, self.gate
            )
            parts.scheduler.step()
            self.step += 1
            self.recovery.after_update(self.step)
            reduced = self.recovery.reduced_loss if self.gate is not None else None
            if reduced is None:
                reduced = context.all_reduce_mean(outcome.loss.float())
            loss, grad_norm, clipped, _ = read_step_values(reduced, outcome)
            self.detector.update(
                loss=loss, grad_norm=grad_norm, clipped=clipped > 0, skipped=not outcome.stepped
            )
        return (time.perf_counter() - started) / steps


def measure(name: str, model: ModelSpec, args: argparse.Namespace, root: Path) -> dict:
    config = TrainConfig(
        dataset_dir=str(root), model=model, clipping={"method": "norm", "max_norm": 1.0}
    )
    prepare_dataset(DataSpec(), root)
    source = arrow_batches(config, WorkerContext())
    batches = list(source.epoch(0))
    runners = {variant: Runner(config, policy, batches) for variant, policy in VARIANTS.items()}
    for runner in runners.values():  # warm-up, and the detector past its own warm-up
        runner.run(50)
    times: dict[str, list[float]] = {variant: [] for variant in runners}
    refused_before = {v: r.recovery.skipped_batches for v, r in runners.items()}
    order = list(runners)
    for round_index in range(args.rounds):
        rotated = order[round_index % len(order) :] + order[: round_index % len(order)]
        for variant in rotated:
            times[variant].append(runners[variant].run(args.block))
    ratios = {
        variant: statistics.median(
            t / n for t, n in zip(times[variant], times["none"], strict=True)
        )
        for variant in runners
    }
    refused = {v: r.recovery.skipped_batches - refused_before[v] for v, r in runners.items()}
    rewinder = runners["rewind(every=50)"]
    restore = []
    for _ in range(args.rewinds):
        rewinder.run(10)  # 10 updates past the snapshot
        rewinder.recovery.severity = 1.0
        started = time.perf_counter()
        rewinder.step = rewinder.recovery.recover(rewinder.step)
        restore.append(time.perf_counter() - started)
        rewinder.recovery.rewinds = 0  # keep max_rewinds from giving up
    parameters = sum(p.numel() for p in rewinder.parts.model.parameters())
    step_seconds = statistics.median(times["none"])
    return {
        "name": name,
        "parameters": parameters,
        "step_ms": {v: 1e3 * statistics.median(t) for v, t in times.items()},
        "ratio": ratios,
        "refused": refused,
        "restore_ms": 1e3 * statistics.median(restore),
        "redo_ms": 1e3 * step_seconds * 25,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved turns per variant")
    parser.add_argument("--block", type=int, default=100, help="steps per turn (multiple of 50)")
    parser.add_argument("--rewinds", type=int, default=20, help="timed rewinds per model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # denormal weights would time the arithmetic, not recovery
    models = {
        "mlp (digits default)": ModelSpec("mlp"),
        "mlp hidden=512": ModelSpec("mlp", {"hidden": 512}),
    }
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as directory:
        results = [
            measure(name, spec, args, Path(directory) / "digits") for name, spec in models.items()
        ]
    print(
        f"\ntorch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread; "
        f"{args.rounds} rounds x {args.block} steps per variant, interleaved; medians\n"
    )
    print("| model | parameters | variant | ms / step | vs none | batches refused |")
    print("|---|---:|---|---:|---:|---:|")
    for result in results:
        for variant, ms in result["step_ms"].items():
            print(
                f"| {result['name']} | {result['parameters'] / 1e6:.2f}M | {variant} | "
                f"{ms:.3f} | {result['ratio'][variant]:.3f} | {result['refused'][variant]} |"
            )
    print()
    print("| model | one rewind: restore | updates it undoes (every/2 = 25 steps) |")
    print("|---|---:|---:|")
    for result in results:
        print(f"| {result['name']} | {result['restore_ms']:.2f} ms | {result['redo_ms']:.0f} ms |")


if __name__ == "__main__":
    main()
