"""One training run's parts and state, so that :func:`train_loops.loop.train` reads like the
step: :class:`Progress` is everything that changes as the run goes (and what a checkpoint
restores), :class:`TrainingRun` the parts built once from the config (model, optimizer,
schedule, precision, clipping, stability detector, spike recovery, cost meter) and the four
things the loop asks of them: take a step, say whether a report is due, report, finish.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from policies import (
    ActivationCheckpointing,
    SavedTensorBytes,
    StabilityDetector,
    build_clip_policy,
    build_precision,
)
from train_loops.batches import evaluate
from train_loops.checkpoint import rng_state, set_rng_state
from train_loops.config import TrainConfig
from train_loops.data import PreparedDataset
from train_loops.models import build_model, fit_standardization
from train_loops.spike_recovery import SpikeRecovery, TrainingParts
from train_loops.step import (
    WorkerContext,
    build_optimizer,
    rank_seed,
    read_step_values,
    train_step,
    warmup_cosine,
)
from train_loops.telemetry import CostMeter, finite, peak_memory_mb

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where the run stands: the loop's only mutable state."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    resumed_from_step: int = 0
    wall_seconds_before: float = 0.0
    """Wall time of the earlier attempts this run resumed from."""
    activation_bytes: float = 0.0
    """Saved-for-backward bytes of one batch, measured on the first batch."""
    steps_to_target: int | None = None
    last_checkpoint_step: int = 0
    window_loss: float = 0.0
    window_correct: int = 0
    window_rows: int = 0
    """Training loss and accuracy since the last report."""

    def count(self, loss: float, correct: int, rows: int) -> None:
        self.window_loss += loss * rows
        self.window_correct += correct
        self.window_rows += rows

    def clear_window(self) -> None:
        self.window_loss, self.window_correct, self.window_rows = 0.0, 0, 0

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0


class TrainingRun:
    """The parts of one run on one worker, built from ``config``; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        batches_per_epoch: int,
        context: WorkerContext,
        clip_policy: Any = None,
    ) -> None:
        self.config, self.context = config, context
        device = context.device
        torch.manual_seed(config.seed)
        self.dataset = PreparedDataset.open(config.dataset_dir)
        train_features, _ = self.dataset.load("train")
        self.val_x, self.val_y = self._tensors("validation")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        model = build_model(config.model, self.dataset.num_features, self.dataset.num_classes)
        fit_standardization(model, train_features)
        if config.activation_checkpointing and hasattr(model, "blocks"):
            ActivationCheckpointing(every=config.activation_checkpointing).apply(model.blocks)
        self.model = context.prepare_model(model.to(device))
        self.bare_model = self.model.module if hasattr(self.model, "module") else self.model
        # Same initial weights on every rank (seeded above); from here each rank draws its own
        # dropout stream, and saves and restores its own RNG state.
        torch.manual_seed(rank_seed(config.seed, context.rank))

        epoch_steps = config.epochs * batches_per_epoch
        self.total_steps = min(config.max_steps, epoch_steps) if config.max_steps else epoch_steps
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, self.total_steps)
        )
        self.precision = build_precision(config.precision, device)
        if clip_policy is None:
            clip_policy = build_clip_policy(config.clipping, self.model)
        self.clip = clip_policy
        self.detector = StabilityDetector(config.stability)
        self.parts = TrainingParts(
            self.bare_model,
            self.optimizer,
            self.scheduler,
            self.precision,
            self.clip,
            self.detector,
        )
        self.recovery = SpikeRecovery(
            config.recovery,
            self.parts,
            world_size=context.world_size,
            all_reduce_mean=context.all_reduce_mean,
        )
        self.gate = self.recovery.allows_update if self.recovery.judges_steps else None
        self.cost = CostMeter(config, context.world_size)
        self.progress = Progress()
        self.done = False
        self._updated = False
        self._started = time.perf_counter()

    def begin(self, resume: dict[str, Any] | None) -> None:
        """Start from scratch, or continue exactly from ``resume`` (a checkpoint's state)."""
        progress = self.progress
        if resume is None:
            # The validation loss before training: the baseline "did it learn?" is measured from.
            self.detector.observe_validation(self._evaluate(self.val_x, self.val_y)[0])
        else:
            self.parts.load_state_dict(resume)
            if "recovery" in resume:
                self.recovery.load_state_dict(resume["recovery"])
            set_rng_state(resume["rng"][min(self.context.rank, len(resume["rng"]) - 1)])
            progress.step = progress.resumed_from_step = resume["step"]
            progress.epoch, progress.batch_in_epoch = resume["epoch"], resume["batch_in_epoch"]
            progress.wall_seconds_before = resume["wall_seconds"]
            progress.activation_bytes = resume["activation_bytes"]
            progress.steps_to_target = resume["steps_to_target"]
            logger.info(
                "resumed at step %d (epoch %d, batch %d)",
                progress.step,
                progress.epoch,
                progress.batch_in_epoch,
            )
        progress.last_checkpoint_step = progress.step
        self.recovery.take_snapshot_if_due(progress.step)
        self.done = progress.step >= self.total_steps
        self._started = time.perf_counter()
        self.model.train()

    @property
    def wants_batches(self) -> bool:
        """Epochs left, or batches that recovery left out still to be made up (past the last
        epoch, up to the planned steps)."""
        progress = self.progress
        return not self.done and (
            progress.epoch < self.config.epochs or progress.step < self.total_steps
        )

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch: an update, or a spike that recovery skips or rewinds (step goes back)."""
        progress = self.progress
        if progress.activation_bytes == 0.0:
            self._measure_activations(features)
        outcome = train_step(
            self.model, features, labels, self.optimizer, self.precision, self.clip, self.gate
        )
        progress.batch_in_epoch += 1
        self._updated = not outcome.refused
        if outcome.refused:
            progress.step = self.recovery.recover(progress.step)
            progress.last_checkpoint_step = min(progress.last_checkpoint_step, progress.step)
            self.done = self.detector.diverged
            return
        self.scheduler.step()
        progress.step += 1
        self.recovery.after_update(progress.step)
        # With a gate the loss was all-reduced before the update already.
        reduced = self.recovery.reduced_loss if self.gate is not None else None
        if reduced is None:
            reduced = self.context.all_reduce_mean(outcome.loss.float())
        loss, grad_norm, clipped, correct = read_step_values(reduced, outcome)
        self.detector.update(
            loss=loss,
            grad_norm=grad_norm,
            clipped=clipped > 0,
            skipped=not outcome.stepped,
            scaler_overflow=outcome.scaler_overflow,
            loss_scale=self.precision.loss_scale if self.precision.scales_loss else None,
        )
        progress.count(loss, int(correct), len(labels))
        self.done = progress.step >= self.total_steps or self.detector.diverged

    @property
    def report_due(self) -> bool:
        """Every ``report_every_steps`` updates, and at the end whatever ended it."""
        every = self.config.report_every_steps
        return self.done or (self._updated and self.progress.step % every == 0)

    def report(self, reporter: Any) -> dict[str, float]:
        """Hand the metrics to ``reporter``, with the full state when a checkpoint is due (and
        the run did not diverge); return the metrics."""
        progress = self.progress
        metrics = self.metrics()
        since = progress.step - progress.last_checkpoint_step
        due = since >= self.config.checkpoint_every_steps or self.done
        checkpoint = self.state_dict() if due and not self.detector.diverged else None
        if checkpoint is not None:
            progress.last_checkpoint_step = progress.step
        reporter(metrics, checkpoint)
        progress.clear_window()
        return metrics

    def finish(self, metrics: dict[str, float]) -> dict[str, float]:
        """The last report's metrics (measured now if the run had nothing left to do) plus the
        test split's loss and accuracy."""
        if not metrics:  # resumed at the very end: nothing left to run
            metrics = self.metrics()
        if self.detector.diverged:
            logger.warning(
                "run diverged at step %d of %d; stopped early", self.progress.step, self.total_steps
            )
        test_loss, test_accuracy = self._evaluate(*self._tensors("test"))
        return {**metrics, "test_loss": finite(test_loss), "test_accuracy": test_accuracy}

    def metrics(self) -> dict[str, float]:
        """Everything a report carries (:data:`train_loops.loop.REPORTED_METRICS`)."""
        progress, config, cost = self.progress, self.config, self.cost
        val_loss, val_accuracy = self._evaluate(self.val_x, self.val_y)
        self.detector.observe_validation(val_loss)
        target = config.target_val_accuracy
        if progress.steps_to_target is None and target is not None and val_accuracy >= target:
            progress.steps_to_target = progress.step
        step = progress.step
        wall = self._wall_seconds()
        # Charged for every batch computed, the ones recovery threw away included.
        device_seconds = cost.device_seconds(step + self.recovery.skipped_batches, wall)
        # Never reached: charged as the whole planned run (finite; the accuracy floor
        # constraint makes such a run infeasible anyway).
        to_target = progress.steps_to_target
        if to_target is None:
            to_target = self.total_steps
        stability = self.detector.report().as_metrics()
        del stability["steps"]
        rows = max(1, progress.window_rows)
        return {
            **stability,
            "step": float(step),
            "epoch": float(progress.epoch),
            "train_loss": finite(progress.window_loss / rows),
            "train_accuracy": progress.window_correct / rows,
            "val_loss": finite(val_loss),
            "val_accuracy": val_accuracy,
            "loss_scale": finite(self.precision.loss_scale),
            "wall_seconds": wall,
            "wall_cost_dollars": cost.dollars(wall * self.context.world_size),
            "device_seconds": device_seconds,
            "cost_dollars": cost.dollars(device_seconds),
            "steps_to_target": float(to_target),
            "cost_to_target_dollars": cost.dollars(
                cost.device_seconds(to_target, wall * to_target / max(1, step))
            ),
            "samples_per_second": step * config.global_batch_size / max(wall, 1e-9),
            "activation_bytes": float(progress.activation_bytes),
            "peak_memory_mb": peak_memory_mb(
                self.context.device, self.bare_model, self.optimizer, progress.activation_bytes
            ),
            "steps_planned": float(self.total_steps),
            "resumed_from_step": float(progress.resumed_from_step),
            **self.recovery.metrics(),
        }

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: every part's state, every rank's RNG state and the progress."""
        progress = self.progress
        return {
            **self.parts.state_dict(),
            "recovery": self.recovery.state_dict(),
            "rng": self.context.all_gather(rng_state()),
            "step": progress.step,
            "epoch": progress.epoch,
            "batch_in_epoch": progress.batch_in_epoch,
            "wall_seconds": self._wall_seconds(),
            "activation_bytes": progress.activation_bytes,
            "steps_to_target": progress.steps_to_target,
        }

    def _measure_activations(self, features: torch.Tensor) -> None:
        # Measured on the bare module: a DDP forward with no backward would leave its reducer
        # expecting gradients.
        with SavedTensorBytes() as counter, self.precision.autocast():
            self.bare_model(features).float().sum()
        self.progress.activation_bytes = float(counter.bytes)
        self.optimizer.zero_grad(set_to_none=True)

    def _wall_seconds(self) -> float:
        return self.progress.wall_seconds_before + time.perf_counter() - self._started

    def _evaluate(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        return evaluate(self.model, features, labels, self.precision.autocast)

    def _tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels = self.dataset.load(split)
        device = self.context.device
        return torch.from_numpy(features).to(device), torch.from_numpy(labels).to(device)
