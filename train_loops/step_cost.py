"""How much one optimizer step costs, measured so that the answer depends on the setting and
not on what else the machine is doing.

Every setting to compare is built once (model, optimizer, precision, activation
checkpointing, one fixed batch of real training rows), warmed up, and then timed in
interleaved rounds: each round times a few steps of every setting, in a rotating order, so a
burst of load hits all settings alike. The per-step cost of a setting is its fastest round:
interference from other work on the machine only ever adds time, so the minimum is the figure
that reproduces (a median follows sustained load up and down; measured in
``docs/benchmarks/cost.md``). On the CPU the clock is the CPU time of the thread running the
step (torch is held to one intra-op thread, as a one-CPU trial has), which other processes on
the machine barely move; with more threads it is the process's CPU time; on CUDA it is wall
time between ``torch.cuda.synchronize()`` calls.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from policies import ActivationCheckpointing, NoClipping, build_precision
from train_loops.config import TrainConfig
from train_loops.data import PreparedDataset
from train_loops.models import build_model, fit_standardization
from train_loops.step import build_optimizer, train_step

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepCostMeasurement:
    """Seconds per optimizer step of each setting (fastest round), and how they were measured."""

    seconds: list[float]
    """One per config given, in order."""
    device: str
    """Where: ``cpu (1 thread, x86_64)`` or ``cuda:0 (NVIDIA H200)``."""
    clock: str
    """Which clock: ``thread CPU time``, ``process CPU time`` or ``CUDA-synchronised wall``."""
    rounds: int
    steps_per_round: int


def device_description(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({threads} thread{'s' if threads != 1 else ''}, {platform.machine()})"


def measure_step_seconds(
    configs: Sequence[TrainConfig],
    *,
    device: torch.device | None = None,
    threads: int = 1,
    rounds: int = 9,
    steps_per_round: int = 4,
    warmup_steps: int = 3,
) -> StepCostMeasurement:
    """Seconds of one optimizer step for each of ``configs``: the fastest of interleaved rounds.

    Only what changes the cost of a step matters: model, per-worker batch size, optimizer,
    precision and activation checkpointing; clipping runs as no clipping (its cost is a few
    reductions). Each config's ``dataset_dir`` provides the batch.
    """
    if not configs:
        raise ValueError("no settings to measure")
    device = device or torch.device("cpu")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        steps = [_step_runner(config, device) for config in configs]
        clock, now = _clock(device, threads)
        for run in steps:
            for _ in range(warmup_steps):
                run()
        samples: list[list[float]] = [[] for _ in configs]
        for round_index in range(rounds):
            order = list(range(len(configs)))
            shift = round_index % len(order)
            for index in order[shift:] + order[:shift]:
                started = now()
                for _ in range(steps_per_round):
                    steps[index]()
                samples[index].append((now() - started) / steps_per_round)
    finally:
        torch.set_num_threads(previous_threads)
    return StepCostMeasurement(
        seconds=[min(values) for values in samples],
        device=device_description(device, threads),
        clock=clock,
        rounds=rounds,
        steps_per_round=steps_per_round,
    )


def _clock(device: torch.device, threads: int) -> tuple[str, Callable[[], float]]:
    if device.type == "cuda":

        def synchronised() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return "CUDA-synchronised wall", synchronised
    if threads == 1:
        return "thread CPU time", time.thread_time
    return "process CPU time", time.process_time


def _step_runner(config: TrainConfig, device: torch.device) -> Callable[[], None]:
    """A closure that runs one training step of ``config`` on a fixed batch."""
    torch.manual_seed(config.seed)
    dataset = PreparedDataset.open(config.dataset_dir)
    features, labels = dataset.load("train")
    rows = min(config.per_worker_batch_size, len(labels))
    model = build_model(config.model, dataset.num_features, dataset.num_classes)
    fit_standardization(model, features)
    if config.activation_checkpointing and hasattr(model, "blocks"):
        ActivationCheckpointing(every=config.activation_checkpointing).apply(model.blocks)
    model = model.to(device).train()
    optimizer = build_optimizer(model, config)
    precision = build_precision(config.precision, device)
    clip = NoClipping()
    batch_x = torch.from_numpy(features[:rows]).to(device)
    batch_y = torch.from_numpy(labels[:rows]).to(device)

    def run() -> None:
        train_step(model, batch_x, batch_y, optimizer, precision, clip)

    return run
