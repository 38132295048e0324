"""Clipping by value: clamp every gradient element to ``[-clip_value, clip_value]``."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from policies import _validation
from policies.clipping.base import ClipReport, global_norm, gradients, no_clip, refuse_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipByValue:
    """Clamp every gradient element into ``[-clip_value, clip_value]``.

    Unlike the global-norm rule this changes the gradient's direction. A non-finite global norm
    leaves the gradients untouched (the clamp bound becomes ``inf``), as the contract requires.

    >>> clip = ClipByValue(clip_value=0.5)
    >>> report = clip(model.parameters())  # doctest: +SKIP
    """

    clip_value: float
    """Largest absolute value any gradient element may keep; > 0."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_value", _validation.positive("clip_value", self.clip_value))

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        grads = gradients(parameters)
        norm = global_norm(grads)
        if not grads:
            return no_clip(norm)
        finite = torch.isfinite(norm)
        # A 0-dim bound keeps the no-clip case on the device; ``minimum``/``maximum`` with it
        # are several times faster on CPU than ``clamp_`` with tensor bounds.
        bound = torch.where(finite, self.clip_value, math.inf).to(norm.dtype)
        flags = []
        for grad in grads:
            smallest, largest = torch.aminmax(grad)
            device_bound = bound.to(grad.device, grad.dtype)
            flags.append((largest > self.clip_value) | (smallest < -self.clip_value))
            torch.minimum(grad, device_bound, out=grad)
            torch.maximum(grad, -device_bound, out=grad)
        exceeded = torch.stack([flag.to(norm.device) for flag in flags]).any()
        return ClipReport(norm, finite & exceeded)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        refuse_state(self, state)
