"""Clipping by global L2 norm, as ``torch.nn.utils.clip_grad_norm_`` does."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from policies import _validation
from policies.clipping.base import ClipReport, global_norm, gradients, refuse_state, scale_

logger = logging.getLogger(__name__)

# The same guard ``clip_grad_norm_`` adds to the denominator: it keeps the clipped norm
# at or just below ``max_norm`` despite rounding.
_EPS = 1e-6


@dataclass(frozen=True)
class ClipByNorm:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    When the norm ``n`` exceeds ``max_norm`` every gradient is multiplied by
    ``max_norm / (n + 1e-6)`` (the factor ``clip_grad_norm_`` uses); otherwise nothing changes.
    Unlike ``clip_grad_norm_``, a non-finite norm leaves the gradients untouched instead of
    filling them with NaN, so the fp16 scaler can still skip the step cleanly.

    >>> clip = ClipByNorm(max_norm=1.0)
    >>> report = clip(model.parameters())  # doctest: +SKIP
    """

    max_norm: float
    """Largest global gradient norm let through; > 0."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_norm", _validation.positive("max_norm", self.max_norm))

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        grads = gradients(parameters)
        norm = global_norm(grads)
        clipped = torch.isfinite(norm) & (norm > self.max_norm)
        factor = torch.where(clipped, self.max_norm / (norm + _EPS), 1.0)
        scale_(grads, factor)
        return ClipReport(norm, clipped)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        refuse_state(self, state)
