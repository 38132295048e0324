"""The training loop every trial and every final fit runs. It never imports Ray.

The same function runs in-process (one-worker trials, unit tests) and inside each Ray Train
worker; what differs is passed in: a :class:`WorkerContext` (rank, device, DDP wrapping,
all-reduce), a batch source and a reporter.

The step reads top to bottom: autocast → scaled backward → unscale → clip (on the all-reduced
gradient: DDP has averaged it during backward) → scaler step/update → ``zero_grad``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from policies import (
    ActivationCheckpointing,
    SavedTensorBytes,
    StabilityDetector,
    StabilityReport,
    build_clip_policy,
    build_precision,
)
from train_loops.batches import BatchSource, evaluate
from train_loops.checkpoint import rng_state, set_rng_state
from train_loops.config import TrainConfig
from train_loops.data import PreparedDataset
from train_loops.models import build_model, fit_standardization
from train_loops.spike_recovery import SpikeRecovery, TrainingParts
from train_loops.telemetry import (  # noqa: F401  (re-exported: the loop's public helpers)
    NONFINITE_LOSS_PENALTY,
    CostMeter,
    finite,
    peak_memory_mb,
    tensor_bytes,
    training_memory_bytes,
)

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


@dataclass(frozen=True)
class WorkerContext:
    """Where this copy of the loop runs. The defaults describe a single in-process worker."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda model: model
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor
    all_gather: Callable[[Any], list[Any]] = lambda value: [value]
    """Every rank's ``value``, in rank order (a collective: all ranks call it together)."""


class StepOutcome(NamedTuple):
    loss: torch.Tensor
    grad_norm: torch.Tensor
    clipped: torch.Tensor
    stepped: bool
    correct: torch.Tensor
    scaler_overflow: bool = False
    """The loss scaler skipped the update because the scaled gradients overflowed."""
    refused: bool = False
    """The ``gate`` refused the update (a spike the recovery policy acts on)."""


def train_step(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    precision: Any,
    clip: Any,
    gate: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
) -> StepOutcome:
    """One optimizer step; fp32, bf16 and fp16 share this path (a disabled scaler is a no-op).

    ``gate(loss, grad_norm)``, when given, is asked after clipping and before the update;
    ``False`` leaves the weights alone (spike recovery)."""
    with precision.autocast():
        logits = model(features)
    loss = functional.cross_entropy(logits.float(), labels)
    precision.backward(loss)
    precision.unscale_(optimizer)  # clip thresholds are in true gradient units
    report = clip([p for p in model.parameters() if p.grad is not None])
    # fp16: the scaler sees inf/NaN itself, skips the step and lowers the scale. fp32/bf16:
    # refuse a non-finite step here, before it poisons the weights.
    refused = gate is not None and not gate(loss.detach(), report.grad_norm)
    if refused:
        stepped = False
        if precision.scales_loss:
            precision.scaler.update()  # closes this step's unscale_ without an update
    elif precision.scales_loss or bool(torch.isfinite(report.grad_norm)):
        stepped = precision.step(optimizer)
    else:
        stepped = False
    optimizer.zero_grad(set_to_none=True)
    correct = (logits.detach().argmax(dim=1) == labels).sum()
    overflow = precision.scales_loss and not stepped and not refused
    return StepOutcome(
        loss.detach(), report.grad_norm, report.clipped, stepped, correct, overflow, refused
    )


def read_step_values(loss: torch.Tensor, outcome: StepOutcome) -> list[float]:
    """Loss, gradient norm, clipped flag and correct count on the host. On a GPU they come
    over in one copy (one sync per step instead of four); on the CPU ``item()`` is cheaper."""
    values = (loss, outcome.grad_norm, outcome.clipped, outcome.correct)
    if loss.device.type == "cpu":
        return [value.item() for value in values]
    # float32 holds the correct count exactly (a batch has far fewer than 2**24 rows).
    return torch.stack([value.detach().float().reshape(()) for value in values]).tolist()


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0.1 at ``total_steps``."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def rank_seed(seed: int, rank: int) -> int:
    """A seed for ``rank``'s random stream, distinct per (seed, rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with (Nesterov-free) momentum, at the configured peak learning rate."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


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
    context = context or WorkerContext()
    device = context.device
    torch.manual_seed(config.seed)
    dataset = PreparedDataset.open(config.dataset_dir)
    train_features, _ = dataset.load("train")
    val_x, val_y = (torch.from_numpy(a).to(device) for a in dataset.load("validation"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model = build_model(config.model, dataset.num_features, dataset.num_classes)
    fit_standardization(model, train_features)
    if config.activation_checkpointing and hasattr(model, "blocks"):
        ActivationCheckpointing(every=config.activation_checkpointing).apply(model.blocks)
    model = context.prepare_model(model.to(device))
    bare_model = model.module if hasattr(model, "module") else model
    # Same initial weights on every rank (seeded above); from here each rank draws its own
    # dropout stream, and saves and restores its own RNG state.
    torch.manual_seed(rank_seed(config.seed, context.rank))

    epoch_steps = config.epochs * batches_per_epoch
    total_steps = min(config.max_steps, epoch_steps) if config.max_steps else epoch_steps
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, total_steps)
    )
    precision = build_precision(config.precision, device)
    clip = clip_policy if clip_policy is not None else build_clip_policy(config.clipping, model)
    detector = StabilityDetector(config.stability)
    parts = TrainingParts(bare_model, optimizer, scheduler, precision, clip, detector)
    recovery = SpikeRecovery(
        config.recovery,
        parts,
        world_size=context.world_size,
        all_reduce_mean=context.all_reduce_mean,
    )
    gate = recovery.allows_update if recovery.judges_steps else None
    cost = CostMeter(config, context.world_size)

    step, epoch, batch_in_epoch = 0, 0, 0
    elapsed_before, activation_bytes, resumed_from_step = 0.0, 0.0, 0
    steps_to_target: int | None = None
    if resume is not None:
        parts.load_state_dict(resume)
        if "recovery" in resume:
            recovery.load_state_dict(resume["recovery"])
        set_rng_state(resume["rng"][min(context.rank, len(resume["rng"]) - 1)])
        step, epoch, batch_in_epoch = resume["step"], resume["epoch"], resume["batch_in_epoch"]
        resumed_from_step = step
        elapsed_before = resume["wall_seconds"]
        activation_bytes = resume["activation_bytes"]
        steps_to_target = resume["steps_to_target"]
        logger.info("resumed at step %d (epoch %d, batch %d)", step, epoch, batch_in_epoch)
    else:
        # The validation loss before training: the baseline "did it learn?" is measured from.
        detector.observe_validation(evaluate(model, val_x, val_y, precision.autocast)[0])
    recovery.take_snapshot_if_due(step)

    started = time.perf_counter()
    window_loss, window_correct, window_rows = 0.0, 0, 0
    last_checkpoint_step, metrics = step, {}
    model.train()

    def build_metrics() -> dict[str, float]:
        nonlocal steps_to_target
        val_loss, val_accuracy = evaluate(model, val_x, val_y, precision.autocast)
        detector.observe_validation(val_loss)
        target = config.target_val_accuracy
        if steps_to_target is None and target is not None and val_accuracy >= target:
            steps_to_target = step
        wall = elapsed_before + time.perf_counter() - started
        # Charged for every batch computed, the ones recovery threw away included.
        device_seconds = cost.device_seconds(step + recovery.skipped_batches, wall)
        # Never reached: charged as the whole planned run (finite; the accuracy floor
        # constraint makes such a run infeasible anyway).
        to_target = steps_to_target if steps_to_target is not None else total_steps
        stability = detector.report().as_metrics()
        del stability["steps"]
        return {
            **stability,
            "step": float(step),
            "epoch": float(epoch),
            "train_loss": finite(window_loss / max(1, window_rows)),
            "train_accuracy": window_correct / max(1, window_rows),
            "val_loss": finite(val_loss),
            "val_accuracy": val_accuracy,
            "loss_scale": finite(precision.loss_scale),
            "wall_seconds": wall,
            "wall_cost_dollars": cost.dollars(wall * context.world_size),
            "device_seconds": device_seconds,
            "cost_dollars": cost.dollars(device_seconds),
            "steps_to_target": float(to_target),
            "cost_to_target_dollars": cost.dollars(
                cost.device_seconds(to_target, wall * to_target / max(1, step))
            ),
            "samples_per_second": step * config.global_batch_size / max(wall, 1e-9),
            "activation_bytes": float(activation_bytes),
            "peak_memory_mb": peak_memory_mb(device, bare_model, optimizer, activation_bytes),
            "steps_planned": float(total_steps),
            "resumed_from_step": float(resumed_from_step),
            **recovery.metrics(),
        }

    def state() -> dict[str, Any]:
        return {
            **parts.state_dict(),
            "recovery": recovery.state_dict(),
            "rng": context.all_gather(rng_state()),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "wall_seconds": elapsed_before + time.perf_counter() - started,
            "activation_bytes": activation_bytes,
            "steps_to_target": steps_to_target,
        }

    done = step >= total_steps
    # Batches that recovery left out are made up past the last epoch, up to the planned steps.
    while not done and (epoch < config.epochs or step < total_steps):
        for features, labels in batches.epoch(epoch, skip=batch_in_epoch):
            if activation_bytes == 0.0:
                # Measured on the bare module: a DDP forward with no backward would leave
                # its reducer expecting gradients.
                with SavedTensorBytes() as counter, precision.autocast():
                    bare_model(features).float().sum()
                activation_bytes = float(counter.bytes)
                optimizer.zero_grad(set_to_none=True)
            outcome = train_step(model, features, labels, optimizer, precision, clip, gate)
            batch_in_epoch += 1
            if outcome.refused:  # a spike: skip the batch, or rewind (step goes back)
                step = recovery.recover(step)
                last_checkpoint_step = min(last_checkpoint_step, step)
                done = detector.diverged
                if not done:
                    continue
            else:
                scheduler.step()
                step += 1
                recovery.after_update(step)
                # With a gate the loss was all-reduced before the update already.
                reduced = recovery.reduced_loss if gate is not None else None
                if reduced is None:
                    reduced = context.all_reduce_mean(outcome.loss.float())
                loss, grad_norm, clipped, correct = read_step_values(reduced, outcome)
                detector.update(
                    loss=loss,
                    grad_norm=grad_norm,
                    clipped=clipped > 0,
                    skipped=not outcome.stepped,
                    scaler_overflow=outcome.scaler_overflow,
                    loss_scale=precision.loss_scale if precision.scales_loss else None,
                )
                window_loss += loss * len(labels)
                window_correct += int(correct)
                window_rows += len(labels)
                done = step >= total_steps or detector.diverged
            if step % config.report_every_steps == 0 or done:
                metrics = build_metrics()
                due = step - last_checkpoint_step >= config.checkpoint_every_steps or done
                checkpoint = state() if due and not detector.diverged else None
                if checkpoint is not None:
                    last_checkpoint_step = step
                report(metrics, checkpoint)
                window_loss, window_correct, window_rows = 0.0, 0, 0
            if done:
                break
        else:
            epoch += 1
            batch_in_epoch = 0

    if not metrics:  # resumed at the very end: nothing left to run
        metrics = build_metrics()
    if detector.diverged:
        logger.warning("run diverged at step %d of %d; stopped early", step, total_steps)
    test_x, test_y = (torch.from_numpy(a).to(device) for a in dataset.load("test"))
    test_loss, test_accuracy = evaluate(model, test_x, test_y, precision.autocast)
    return {**metrics, "test_loss": finite(test_loss), "test_accuracy": test_accuracy}
