"""One optimizer step and the pieces a run is built from: where a worker runs
(:class:`WorkerContext`), the optimizer, the learning-rate schedule and each rank's seed.

The step reads top to bottom: autocast → scaled backward → unscale → clip (on the all-reduced
gradient: DDP has averaged it during backward) → scaler step/update → ``zero_grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from train_loops.config import TrainConfig


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
