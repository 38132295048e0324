"""The training loop every trial and every final fit runs. It never imports Ray.

The same function runs in-process (one-worker trials, unit tests) and inside each Ray Train
worker; what differs is passed in: a :class:`WorkerContext` (rank, device, DDP wrapping,
all-reduce), a batch source and a reporter. The step is :func:`train_loops.step.train_step`;
the run's parts and state are :class:`train_loops.training_run.TrainingRun`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from policies import StabilityReport
from train_loops.batches import BatchSource
from train_loops.config import TrainConfig
from train_loops.step import (  # noqa: F401  (re-exported: the loop's public pieces)
    StepOutcome,
    WorkerContext,
    build_optimizer,
    rank_seed,
    read_step_values,
    train_step,
    warmup_cosine,
)
from train_loops.telemetry import (  # noqa: F401  (re-exported: the loop's public helpers)
    NONFINITE_LOSS_PENALTY,
    CostMeter,
    finite,
    peak_memory_mb,
    tensor_bytes,
    training_memory_bytes,
)
from train_loops.training_run import TrainingRun

logger = logging.getLogger(__name__)

REPORTED_METRICS = (
    "step",
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    *(field.name for field in dataclasses.fields(StabilityReport) if field.name != "steps"),
    "loss_scale",
    "wall_seconds",
    "wall_cost_dollars",
    "device_seconds",
    "cost_dollars",
    "steps_to_target",
    "cost_to_target_dollars",
    "samples_per_second",
    "activation_bytes",
    "peak_memory_mb",
    "steps_planned",
    "resumed_from_step",
    "rewinds",
    "skipped_batches",
    "steps_lost",
)
"""Keys present in every report (the search's objectives and constraints are among them)."""


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, float], checkpoint: dict[str, Any] | None) -> None:
        """Hand one report on; ``checkpoint`` is the full state when one is due, else None."""
        ...


def train(
    config: TrainConfig,
    *,
    batches: BatchSource,
    batches_per_epoch: int,
    report: Reporter,
    resume: dict[str, Any] | None = None,
    context: WorkerContext | None = None,
    clip_policy: Any = None,
) -> dict[str, float]:
    """Train per ``config`` from scratch or from ``resume`` (a loaded checkpoint state).

    ``clip_policy`` replaces the configured clipping (the search's gradient probe passes one
    that records the gradients it sees). Returns the last report's metrics plus
    ``test_loss``/``test_accuracy``. The run ends with a report carrying a checkpoint whichever
    of ``epochs`` and ``max_steps`` ends it.
    """
    run = TrainingRun(
        config,
        batches_per_epoch=batches_per_epoch,
        context=context or WorkerContext(),
        clip_policy=clip_policy,
    )
    run.begin(resume)
    progress, metrics = run.progress, {}
    while run.wants_batches:
        for features, labels in batches.epoch(progress.epoch, skip=progress.batch_in_epoch):
            run.step(features, labels)
            if run.report_due:
                metrics = run.report(report)
            if run.done:
                break
        else:
            progress.next_epoch()
    return run.finish(metrics)
