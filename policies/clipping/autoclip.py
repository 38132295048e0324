"""AutoClip, Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source
Separation Networks": clip to a percentile of the gradient norms seen so far."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from policies import _validation
from policies.clipping.base import ClipReport, global_norm, gradients, no_clip, scale_

logger = logging.getLogger(__name__)

_EPS = 1e-6
_INITIAL_CAPACITY = 64


class NormHistory:
    """The finite gradient norms seen so far, or the last ``window`` of them.

    They live in a NaN-padded buffer on the gradients' device: a non-finite norm is "appended"
    by writing back the slot's old value, and ``nanquantile`` ignores the padding, so neither
    appending nor taking a percentile reads anything back to the host. With a window the buffer
    is a ring of ``window`` slots; without one it doubles whenever the number of calls (a
    host-side upper bound on the number of norms) reaches its size, so memory grows by one
    float per step and each percentile sorts the whole history; bound it with a window on long
    runs (``torch.nanquantile`` also refuses more than 2**24 values).
    """

    def __init__(self, window: int | None) -> None:
        self.window = window
        self._buffer = torch.full((window or _INITIAL_CAPACITY,), float("nan"))
        self._count = torch.zeros((), dtype=torch.int64)  # finite norms appended so far
        self._calls = 0  # appends attempted, finite or not; never less than ``_count``

    def append(self, norm: torch.Tensor) -> None:
        """Record ``norm`` if it is finite; do nothing (on the device) otherwise."""
        if self._buffer.device != norm.device:
            self._buffer = self._buffer.to(norm.device)
            self._count = self._count.to(norm.device)
        if self.window is None and self._calls >= self._buffer.numel():
            padding = torch.full_like(self._buffer, float("nan"))
            self._buffer = torch.cat([self._buffer, padding])
        slot = self._count % self._buffer.numel() if self.window else self._count
        finite = torch.isfinite(norm)
        old = self._buffer.index_select(0, slot.view(1))
        self._buffer.index_copy_(0, slot.view(1), torch.where(finite, norm.to(old.dtype), old))
        self._count += finite
        self._calls += 1

    def percentile(self, percentile: float) -> torch.Tensor:
        """The ``percentile``-th percentile (0-100, linear interpolation, as ``np.percentile``)
        of the recorded norms; NaN while none is recorded."""
        return torch.nanquantile(self._buffer, percentile / 100.0)

    def norms(self) -> torch.Tensor:
        """The recorded norms, oldest first, as a CPU tensor (reads the device)."""
        buffer = self._buffer.cpu()
        count = int(self._count)
        if self.window is None or count <= self.window:
            return buffer[: min(count, buffer.numel())].clone()
        return torch.roll(buffer, -(count % self.window))

    def load(self, norms: torch.Tensor) -> None:
        """Replace the history by ``norms`` (oldest first; only the last ``window`` are kept)."""
        norms = torch.as_tensor(norms, dtype=torch.float32).flatten().cpu()
        if self.window is not None:
            norms = norms[-self.window :]
            capacity = self.window
        else:
            capacity = max(_INITIAL_CAPACITY, 2 * norms.numel())
        self._buffer = torch.full((capacity,), float("nan"))
        self._buffer[: norms.numel()] = norms
        self._count = torch.tensor(norms.numel(), dtype=torch.int64)
        self._calls = norms.numel()


@dataclass(frozen=True)
class AutoClip:
    """Clip the global norm to the ``percentile``-th percentile of the norm history.

    Each call first appends the current norm to the history and then clips to the percentile
    of the history including it, as the paper's reference code does; so the first step is never
    clipped. ``window`` bounds the history to the most recent norms (the paper keeps them all).
    Non-finite norms are neither recorded nor clipped.

    >>> clip = AutoClip(percentile=10.0, window=1000)
    >>> report = clip(model.parameters())  # doctest: +SKIP
    """

    percentile: float = 10.0
    """Percentile of the norm history used as the threshold, in [0, 100]."""
    window: int | None = None
    """Keep only the last ``window`` finite norms (>= 1); ``None`` keeps all of them."""
    history: NormHistory = field(init=False, repr=False, compare=False)
    """The recorded norms; saved and restored through :meth:`state_dict`."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "percentile",
            _validation.in_range(
                "percentile", self.percentile, 0.0, 100.0, low_open=False, high_open=False
            ),
        )
        if self.window is not None:
            object.__setattr__(
                self, "window", _validation.integer("window", self.window, minimum=1)
            )
        object.__setattr__(self, "history", NormHistory(self.window))

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        grads = gradients(parameters)
        norm = global_norm(grads)
        if not grads:  # nothing was observed: a norm of 0 must not enter the statistics
            return no_clip(norm)
        self.history.append(norm)
        threshold = self.history.percentile(self.percentile).to(norm.dtype)
        clipped = torch.isfinite(norm) & (norm > threshold)
        scale_(grads, torch.where(clipped, threshold / (norm + _EPS), 1.0))
        return ClipReport(norm, clipped)

    def state_dict(self) -> dict[str, Any]:
        """``{"history": CPU float32 tensor of the recorded norms, oldest first}``."""
        return {"history": self.history.norms()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"history"}:
            raise ValueError(
                f"AutoClip state must have exactly the key 'history', got {sorted(state)}"
            )
        self.history.load(state["history"])
