"""What a run reports about its cost and memory: deterministic where it can be.

Memory on CPU is what the setting needs (parameters, gradients, optimizer state, measured
activations), not the process's RSS; cost is calibrated steps x seconds per step when the study
measured one, wall-clock otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from train_loops.config import TrainConfig

NONFINITE_LOSS_PENALTY = 1.0e6
"""Reported in place of a non-finite loss, so no report ever carries NaN or inf."""


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the tensors found in ``tensors`` (nested dicts, lists, tuples)."""
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, dict):
        return sum(tensor_bytes(value) for value in tensors.values())
    if isinstance(tensors, list | tuple):
        return sum(tensor_bytes(value) for value in tensors)
    return 0


def training_memory_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer, activation_bytes: float
) -> float:
    """What a step needs, deterministically: parameters + their gradients + optimizer state +
    the activations the forward pass saves for backward (measured once per run)."""
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    optimizer_state = tensor_bytes(list(optimizer.state.values()))
    return float(parameters + gradients + optimizer_state) + activation_bytes


def peak_memory_mb(
    device: torch.device,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    activation_bytes: float,
) -> float:
    """CUDA allocator peak since the run started on a GPU; on CPU, where the process's RSS
    measures torch and Ray rather than the setting, :func:`training_memory_bytes`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return training_memory_bytes(model, optimizer, activation_bytes) / 2**20


def finite(value: float, penalty: float = NONFINITE_LOSS_PENALTY) -> float:
    return float(value) if math.isfinite(value) else penalty


@dataclass
class CostMeter:
    """Cost of the steps taken so far: calibrated (``steps x step_cost_seconds``) when the
    config carries a per-step cost, wall-clock otherwise; wall-clock always as telemetry."""

    config: TrainConfig
    world_size: int

    def device_seconds(self, steps: int, wall_seconds: float) -> float:
        if self.config.step_cost_seconds is not None:
            return steps * self.config.step_cost_seconds * self.world_size
        return wall_seconds * self.world_size

    def dollars(self, device_seconds: float) -> float:
        return device_seconds / 3600.0 * self.config.price_per_worker_hour
