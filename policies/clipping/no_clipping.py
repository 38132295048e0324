"""No clipping: measure and report the gradient norm, change nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from policies.clipping.base import ClipReport, global_norm, gradients, no_clip, refuse_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoClipping:
    """Leave gradients untouched; still report their global norm so every run logs it.

    >>> report = NoClipping()(model.parameters())  # doctest: +SKIP
    """

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        return no_clip(global_norm(gradients(parameters)))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        refuse_state(self, state)
