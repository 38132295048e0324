"""ZClip, Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training": clip
gradient norms that are outliers (by z-score) against an EMA of recent norms."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from policies import _validation
from policies.clipping.base import ClipReport, global_norm, gradients, no_clip, scale_

logger = logging.getLogger(__name__)

# Added to the standard deviation before dividing (as the reference code does) and to the norm
# before scaling (as ``clip_grad_norm_`` does).
_EPS = 1e-6
ZClipMode = Literal["reciprocal", "zscore"]
_MODES = ("reciprocal", "zscore")


class ZClipStatistics:
    """Running statistics of the gradient norm, kept as tensors on the gradients' device.

    ``mean`` and ``var`` are the EMA estimates (valid once ``steps >= warmup_steps``);
    ``steps`` counts finite norms seen; ``warmup_norms`` is a NaN-padded buffer of the first
    ``warmup_steps`` finite norms, from which ``mean`` and ``var`` are initialised.
    """

    def __init__(self, warmup_steps: int) -> None:
        self.mean = torch.zeros(())
        self.var = torch.zeros(())
        self.steps = torch.zeros((), dtype=torch.int64)
        self.warmup_norms = torch.full((warmup_steps,), float("nan"))

    def to(self, device: torch.device) -> None:
        """Move every statistic to ``device`` (no-op when already there)."""
        if self.mean.device != device:
            self.mean, self.var = self.mean.to(device), self.var.to(device)
            self.steps, self.warmup_norms = self.steps.to(device), self.warmup_norms.to(device)


@dataclass(frozen=True)
class ZClip:
    """Clip the global norm when its z-score against an EMA of past norms exceeds a threshold.

    With ``mu`` and ``sigma`` the EMA mean and standard deviation of the norm and
    ``z = (||g|| - mu) / sigma``, a step with ``z > z_threshold`` has its gradients scaled so
    their norm becomes

    * ``mu + (z_threshold**2 / z) * sigma`` in ``"reciprocal"`` mode (the paper's rule: the
      further out the spike, the harder it is cut), or
    * ``mu + z_threshold * sigma`` in ``"zscore"`` mode.

    The EMA is then updated with the norm after clipping::

        mu      <- alpha * mu + (1 - alpha) * n
        sigma^2 <- alpha * sigma^2 + (1 - alpha) * (n - mu)^2     (with the updated mu)

    During the first ``warmup_steps`` finite norms nothing is clipped — unless
    ``warmup_max_norm`` is set, the reference implementation's optional hard cap: then a
    warm-up norm above it is clipped to it (and recorded as clipped). The (capped) warm-up
    norms' mean and (population) variance initialise ``mu`` and ``sigma^2``. Non-finite norms
    are neither clipped nor counted. All of it runs on the device without host synchronisation.

    >>> clip = ZClip(alpha=0.97, z_threshold=2.5, warmup_steps=25)
    >>> report = clip(model.parameters())  # doctest: +SKIP
    """

    alpha: float = 0.97
    """EMA smoothing factor for the mean and variance, in (0, 1); larger is smoother."""
    z_threshold: float = 2.5
    """z-score above which a norm is clipped; > 0."""
    warmup_steps: int = 25
    """Finite norms collected, unclipped, before the EMA starts; >= 1."""
    mode: ZClipMode = "reciprocal"
    """How far a spike is cut back: ``"reciprocal"`` (paper) or ``"zscore"`` (see above)."""
    warmup_max_norm: float | None = None
    """Hard cap on the global norm during warm-up (``None``: no clipping during warm-up)."""
    statistics: ZClipStatistics = field(init=False, repr=False, compare=False)
    """The running statistics; saved and restored through :meth:`state_dict`."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "alpha",
            _validation.in_range("alpha", self.alpha, 0.0, 1.0, low_open=True, high_open=True),
        )
        object.__setattr__(
            self, "z_threshold", _validation.positive("z_threshold", self.z_threshold)
        )
        object.__setattr__(
            self, "warmup_steps", _validation.integer("warmup_steps", self.warmup_steps, minimum=1)
        )
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.warmup_max_norm is not None:
            object.__setattr__(
                self,
                "warmup_max_norm",
                _validation.positive("warmup_max_norm", self.warmup_max_norm),
            )
        object.__setattr__(self, "statistics", ZClipStatistics(self.warmup_steps))

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        grads = gradients(parameters)
        norm = global_norm(grads)
        if not grads:  # nothing was observed: a norm of 0 must not enter the statistics
            return no_clip(norm)
        stats = self.statistics
        stats.to(norm.device)
        value = norm.to(stats.mean.dtype)
        finite = torch.isfinite(value)
        warming = stats.steps < self.warmup_steps
        active = finite & ~warming

        std = stats.var.sqrt()
        z = (value - stats.mean) / (std + _EPS)
        if self.mode == "reciprocal":
            threshold = stats.mean + (self.z_threshold**2 / z) * std
        else:
            threshold = stats.mean + self.z_threshold * std
        clipped = active & (z > self.z_threshold)
        factor = torch.where(clipped, threshold / (value + _EPS), 1.0)
        if self.warmup_max_norm is not None:
            capped = finite & warming & (value > self.warmup_max_norm)
            factor = torch.where(capped, self.warmup_max_norm / (value + _EPS), factor)
            value = torch.where(capped, torch.full_like(value, self.warmup_max_norm), value)
            clipped = clipped | capped
        scale_(grads, factor)

        # EMA update with the norm after clipping, only past warm-up and for a finite norm.
        after = torch.where(clipped, threshold, value)
        mean = self.alpha * stats.mean + (1 - self.alpha) * after
        var = self.alpha * stats.var + (1 - self.alpha) * (after - mean) ** 2
        stats.mean = torch.where(active, mean, stats.mean)
        stats.var = torch.where(active, var, stats.var)

        # Warm-up: record the norm; once the buffer is full, initialise the EMA from it.
        collect = finite & warming
        slot = stats.steps.clamp(max=self.warmup_steps - 1).view(1)
        old = stats.warmup_norms.index_select(0, slot)
        stats.warmup_norms.index_copy_(0, slot, torch.where(collect, value, old))
        stats.steps += finite
        start = collect & (stats.steps == self.warmup_steps)
        stats.mean = torch.where(start, stats.warmup_norms.mean(), stats.mean)
        stats.var = torch.where(start, stats.warmup_norms.var(correction=0), stats.var)
        return ClipReport(norm, clipped)

    def state_dict(self) -> dict[str, Any]:
        """``mean``/``var`` (0-dim CPU tensors), ``steps`` (int) and ``warmup_norms`` (the
        finite norms collected during warm-up, as a CPU tensor)."""
        stats = self.statistics
        steps = int(stats.steps)
        return {
            "mean": stats.mean.cpu().clone(),
            "var": stats.var.cpu().clone(),
            "steps": steps,
            "warmup_norms": stats.warmup_norms[: min(steps, self.warmup_steps)].cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"mean", "var", "steps", "warmup_norms"}
        if set(state) != expected:
            raise ValueError(f"ZClip state must have keys {sorted(expected)}, got {sorted(state)}")
        warmup_norms = torch.as_tensor(state["warmup_norms"], dtype=torch.float32).flatten()
        steps = _validation.integer("steps", state["steps"], minimum=0)
        if warmup_norms.numel() != min(steps, self.warmup_steps):
            raise ValueError(
                f"ZClip state has {warmup_norms.numel()} warm-up norms for {steps} steps, "
                f"but warmup_steps is {self.warmup_steps}"
            )
        stats = ZClipStatistics(self.warmup_steps)
        stats.mean = torch.as_tensor(state["mean"], dtype=torch.float32).reshape(()).clone()
        stats.var = torch.as_tensor(state["var"], dtype=torch.float32).reshape(()).clone()
        stats.steps = torch.tensor(steps, dtype=torch.int64)
        stats.warmup_norms[: warmup_norms.numel()] = warmup_norms
        object.__setattr__(self, "statistics", stats)
