"""The stability detector's settings and report: what it recognises and what it returns.

:class:`StabilityConfig` is also the ``training.stability`` section of a study spec.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict

from policies import _validation

MAX_SCORE_WITHOUT_DIVERGENCE = 0.99
"""Below 1 so that a run that did not diverge always scores better than one that did."""

MAD_TO_SIGMA = 1.4826
"""``1.4826 * MAD`` estimates the standard deviation of normally distributed values."""

MIN_SPREAD = 1e-3
"""Floor of the robust spread (log units for gradient norms, loss units times the loss scale
for losses), so a perfectly flat baseline does not turn noise into infinite z-scores."""


@dataclass(frozen=True)
class StabilityConfig:
    """How :class:`StabilityDetector` recognises spikes, divergence and stalling, and scores."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # as a spec section: unknown keys refused

    window: int = 50
    """Finite values (per signal) in the robust running baseline (median and MAD); >= 5."""
    warmup_steps: int = 20
    """Finite values seen before spikes are looked for (the baseline needs them); >= 1."""
    spike_z: float = 6.0
    """A value is a spike when its robust z-score ``(x - median) / (1.4826 MAD)`` against the
    baseline exceeds this (and see the two rules below); > 0."""
    loss_spike_min_rise: float = 0.25
    """...a loss must also exceed the median by this fraction of ``max(median, 0.1 x first
    loss)``, so batch noise of a nearly-zero loss is not a spike; >= 0."""
    grad_spike_min_ratio: float = 2.0
    """...and a gradient norm must be at least this multiple of the median norm (norms are
    compared on a log scale); >= 1."""
    max_severity: float = 5.0
    """A spike's severity is ``z / spike_z`` (1 at the threshold), capped here; >= 1."""
    divergence_factor: float = 3.0
    """The run diverges when the loss EMA stays above this multiple of the first finite loss
    for ``divergence_patience`` consecutive steps; > 1."""
    divergence_patience: int = 10
    """...also when that many consecutive steps after the first successful update are bad
    (non-finite gradients, or fp16 overflows); >= 1."""
    ema_alpha: float = 0.95
    """Smoothing factor of the loss EMA the divergence rule watches, in (0, 1)."""
    grad_norm_window: int = 1000
    """Gradient-norm percentiles (telemetry) are taken over the last this-many finite norms."""
    min_loss_reduction: float = 0.1
    """A run is *stalled* when its validation loss fell by less than this fraction of its
    value before training (``loss_reduction < min_loss_reduction``); >= 0 (0 disables)."""
    loss_spike_weight: float = 10.0
    """Weight of the loss-spike rate (summed severities per step) in the score; >= 0."""
    grad_spike_weight: float = 1.5
    """Weight of the gradient-norm spike rate in the score; >= 0."""
    bad_step_weight: float = 20.0
    """Weight of the rate of non-finite steps and post-calibration scaler backoffs; >= 0."""
    progress_weight: float = 1.0
    """Weight of the progress shortfall ``clip((min - reduction) / min, 0, 1)``; >= 0."""
    recovered_spike_weight: float = 2.0
    """Weight of the rate of spikes a recovery policy acted on (summed severities per step;
    the update was skipped or rewound): less than ``loss_spike_weight``, since the model never
    absorbed them; >= 0."""

    def __post_init__(self) -> None:
        def non_negative(name: str) -> float:
            return _validation.in_range(
                name, getattr(self, name), 0.0, math.inf, low_open=False, high_open=True
            )

        checked: dict[str, Any] = {
            "window": _validation.integer("window", self.window, minimum=5),
            "warmup_steps": _validation.integer("warmup_steps", self.warmup_steps, minimum=1),
            "spike_z": _validation.positive("spike_z", self.spike_z),
            "loss_spike_min_rise": non_negative("loss_spike_min_rise"),
            "grad_spike_min_ratio": _validation.in_range(
                "grad_spike_min_ratio",
                self.grad_spike_min_ratio,
                1.0,
                math.inf,
                low_open=False,
                high_open=True,
            ),
            "max_severity": _validation.in_range(
                "max_severity", self.max_severity, 1.0, math.inf, low_open=False, high_open=True
            ),
            "divergence_factor": _validation.in_range(
                "divergence_factor",
                self.divergence_factor,
                1.0,
                math.inf,
                low_open=True,
                high_open=True,
            ),
            "divergence_patience": _validation.integer(
                "divergence_patience", self.divergence_patience, minimum=1
            ),
            "ema_alpha": _validation.in_range(
                "ema_alpha", self.ema_alpha, 0.0, 1.0, low_open=True, high_open=True
            ),
            "grad_norm_window": _validation.integer(
                "grad_norm_window", self.grad_norm_window, minimum=1
            ),
            "min_loss_reduction": _validation.in_range(
                "min_loss_reduction",
                self.min_loss_reduction,
                0.0,
                1.0,
                low_open=False,
                high_open=True,
            ),
        }
        for name in (
            "loss_spike_weight",
            "grad_spike_weight",
            "bad_step_weight",
            "progress_weight",
            "recovered_spike_weight",
        ):
            checked[name] = non_negative(name)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StabilityConfig:
        """Build from a plain mapping; an unknown key raises ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown stability setting(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)


@dataclass(frozen=True)
class StabilityReport:
    """Summary of a run's stability so far; every number is finite."""

    steps: int
    """Optimizer steps reported (calls of :meth:`StabilityDetector.update`)."""
    loss_spikes: int
    """Steps whose loss was a spike."""
    loss_spike_severity: float
    """Sum of the loss spikes' severities (each ``z / spike_z``, capped)."""
    grad_norm_spikes: int
    """Steps whose gradient norm (before clipping) was a spike."""
    grad_norm_spike_severity: float
    """Sum of the gradient-norm spikes' severities."""
    nonfinite_steps: int
    """Steps with a non-finite loss or gradient norm that the loss scaler did not handle."""
    clipped_steps: int
    """Steps on which the clipping policy changed the gradients."""
    skipped_steps: int
    """Steps whose update was not applied (scaler overflow or a refused non-finite step)."""
    recovered_spikes: int
    """Spikes a recovery policy acted on before the update (the batch skipped, or the run
    rewound); they are not in ``loss_spikes``/``grad_norm_spikes`` or ``steps``."""
    recovered_spike_severity: float
    """Sum of the recovered spikes' severities."""
    scaler_calibration_skips: int
    """fp16 overflows while the loss scaler was calibrating: before its first successful step,
    or right after it raised the scale. Expected, and not scored."""
    scaler_backoffs: int
    """fp16 overflows after calibration: the scale had to come down mid-run. Scored."""
    clipped_fraction: float
    """``clipped_steps / steps`` (0.0 before any step)."""
    grad_norm_p50: float
    """Median of the recent finite gradient norms (0.0 when there are none)."""
    grad_norm_p95: float
    """95th percentile of the recent finite gradient norms (0.0 when there are none)."""
    grad_norm_max: float
    """Largest finite gradient norm of the whole run (0.0 when there is none)."""
    initial_val_loss: float
    """Validation loss before training (0.0 until observed)."""
    loss_reduction: float
    """``(first - latest) / first`` of the validation loss (of the training loss's medians
    when no validation loss was observed); negative when it rose, clamped to [-10, 1]."""
    stalled: bool
    """The run learned too little: ``loss_reduction < min_loss_reduction`` once two
    validation losses (or, without them, two windows of training losses) were seen."""
    instability_score: float
    """0.0 smooth ... 1.0 diverged; see :class:`StabilityDetector`."""
    diverged: bool
    """Whether the run diverged (see :attr:`StabilityDetector.diverged`)."""

    def as_metrics(self) -> dict[str, float]:
        """Every field as a float under its own name (flags as 0.0 or 1.0)."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` with linear interpolation, as
    ``numpy.percentile``; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = q / 100.0 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def robust_z(value: float, baseline: Sequence[float], floor: float) -> tuple[float, float]:
    """``(z, median)``: ``z = (value - median) / max(1.4826 MAD, floor)`` over ``baseline``."""
    median = statistics.median(baseline)
    mad = statistics.median(abs(x - median) for x in baseline)
    return (value - median) / max(MAD_TO_SIGMA * mad, floor), median
