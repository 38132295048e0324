"""Stability detector: watches loss and gradient norm step by step, counts what went wrong,
declares divergence so a run can stop early, and condenses it all into one score."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies import _validation

logger = logging.getLogger(__name__)

# Below 1 so that a run that did not diverge always scores better than one that did.
MAX_SCORE_WITHOUT_DIVERGENCE = 0.99


@dataclass(frozen=True)
class StabilityConfig:
    """How :class:`StabilityDetector` recognises spikes and divergence and scores a run."""

    ema_alpha: float = 0.95
    """Smoothing factor of the exponential moving mean and variance of the loss, in (0, 1)."""
    warmup_steps: int = 20
    """Finite losses seen before spikes are looked for (the EMA needs them to settle); >= 1."""
    spike_z: float = 4.0
    """A loss is a spike when its z-score against the EMA exceeds this (and see below); > 0."""
    spike_min_rise: float = 0.1
    """...and when it exceeds the EMA mean by more than this fraction of the mean's magnitude,
    so tiny fluctuations of a very flat loss are not spikes; >= 0."""
    divergence_factor: float = 3.0
    """The run diverges when the loss EMA stays above this multiple of the first finite
    loss...; > 1."""
    divergence_patience: int = 10
    """...for this many consecutive steps; >= 1."""
    grad_norm_window: int = 1000
    """Gradient-norm percentiles are taken over the last this-many finite norms; >= 1."""
    spike_weight: float = 10.0
    """Weight ``a`` of the spike rate in the instability score; >= 0."""
    nonfinite_weight: float = 20.0
    """Weight ``b`` of the rate of non-finite or skipped steps in the instability score; >= 0."""

    def __post_init__(self) -> None:
        checked = {
            "ema_alpha": _validation.in_range(
                "ema_alpha", self.ema_alpha, 0.0, 1.0, low_open=True, high_open=True
            ),
            "warmup_steps": _validation.integer("warmup_steps", self.warmup_steps, minimum=1),
            "spike_z": _validation.positive("spike_z", self.spike_z),
            "spike_min_rise": _validation.in_range(
                "spike_min_rise", self.spike_min_rise, 0.0, math.inf, low_open=False, high_open=True
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
            "grad_norm_window": _validation.integer(
                "grad_norm_window", self.grad_norm_window, minimum=1
            ),
            "spike_weight": _validation.in_range(
                "spike_weight", self.spike_weight, 0.0, math.inf, low_open=False, high_open=True
            ),
            "nonfinite_weight": _validation.in_range(
                "nonfinite_weight",
                self.nonfinite_weight,
                0.0,
                math.inf,
                low_open=False,
                high_open=True,
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class StabilityReport:
    """Summary of a run's stability so far; every number is finite."""

    steps: int
    """Optimizer steps reported (calls of :meth:`StabilityDetector.update`)."""
    loss_spikes: int
    """Steps whose loss was a spike (see :class:`StabilityConfig`)."""
    nonfinite_steps: int
    """Steps with a non-finite loss or gradient norm."""
    clipped_steps: int
    """Steps on which the clipping policy changed the gradients."""
    skipped_steps: int
    """Steps the fp16 loss scaler skipped."""
    clipped_fraction: float
    """``clipped_steps / steps`` (0.0 before any step)."""
    grad_norm_p50: float
    """Median of the recent finite gradient norms (0.0 when there are none)."""
    grad_norm_p95: float
    """95th percentile of the recent finite gradient norms (0.0 when there are none)."""
    grad_norm_max: float
    """Largest finite gradient norm of the whole run (0.0 when there is none)."""
    instability_score: float
    """0.0 smooth ... 1.0 diverged; see :meth:`StabilityDetector.instability_score`."""
    diverged: bool
    """Whether the run diverged (see :attr:`StabilityDetector.diverged`)."""

    def as_metrics(self) -> dict[str, float]:
        """Every field as a float under its own name (``diverged`` as 0.0 or 1.0)."""
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


class StabilityDetector:
    """Fed the loss and gradient norm once per optimizer step, tracks how stable training is.

    **Spikes.** The loss has an exponential moving mean ``m`` and variance ``v``, updated with
    every finite loss ``x`` (``d = x - m; m += (1 - alpha) d; v = alpha (v + (1 - alpha) d^2)``,
    starting from the first finite loss with ``v = 0``). After ``warmup_steps`` finite losses, a
    loss *before* its update is a spike when ``(x - m) / sqrt(v) > spike_z`` and
    ``x - m > spike_min_rise * |m|``.

    **Divergence** (sticky, so a run can stop early): a non-finite loss, or the loss EMA above
    ``divergence_factor`` times the first finite loss for ``divergence_patience`` consecutive
    steps. The second rule assumes a positive loss (cross-entropy, MSE); with a first loss
    <= 0 only the non-finite rule applies.

    **Instability score**, in [0, 1]::

        1.0                                                            if diverged
        min(0.99, 1 - exp(-(a * spikes / steps + b * bad / steps)))    otherwise

    with ``a = spike_weight``, ``b = nonfinite_weight`` and ``bad`` the steps with a non-finite
    loss or gradient norm or skipped by the fp16 scaler (each step counted once). A smooth run
    scores exactly 0.0; the score rises with the spike rate and the bad-step rate; only a
    diverged run reaches 1.0.

    Memory is bounded: the gradient-norm percentiles use the last ``grad_norm_window`` finite
    norms; the maximum is kept over the whole run.

    >>> detector = StabilityDetector(StabilityConfig())
    >>> detector.update(loss=2.3, grad_norm=1.2, clipped=False, skipped=False)
    >>> detector.report().instability_score
    0.0
    """

    def __init__(self, config: StabilityConfig | None = None) -> None:
        self.config = config if config is not None else StabilityConfig()
        self._steps = 0
        self._loss_spikes = 0
        self._nonfinite_steps = 0
        self._clipped_steps = 0
        self._skipped_steps = 0
        self._bad_steps = 0
        self._finite_losses = 0
        self._initial_loss = 0.0
        self._loss_mean = 0.0
        self._loss_var = 0.0
        self._steps_above_start = 0
        self._diverged = False
        self._grad_norms: deque[float] = deque(maxlen=self.config.grad_norm_window)
        self._grad_norm_max = 0.0

    def update(self, *, loss: float, grad_norm: float, clipped: bool, skipped: bool) -> None:
        """Record one optimizer step. Tensors are accepted too (they are read to the host)."""
        loss, grad_norm = float(loss), float(grad_norm)
        clipped, skipped = bool(clipped), bool(skipped)
        self._steps += 1
        self._clipped_steps += clipped
        self._skipped_steps += skipped
        loss_finite, norm_finite = math.isfinite(loss), math.isfinite(grad_norm)
        if not (loss_finite and norm_finite):
            self._nonfinite_steps += 1
        if not (loss_finite and norm_finite) or skipped:
            self._bad_steps += 1
        if norm_finite:
            self._grad_norms.append(grad_norm)
            self._grad_norm_max = max(self._grad_norm_max, grad_norm)
        if loss_finite:
            self._observe_loss(loss)
        elif not self._diverged:
            self._diverged = True
            logger.warning("training diverged at step %d: loss is %s", self._steps, loss)

    def _observe_loss(self, loss: float) -> None:
        config = self.config
        if self._finite_losses == 0:
            self._initial_loss = self._loss_mean = loss
        else:
            if self._finite_losses >= config.warmup_steps and self._is_spike(loss):
                self._loss_spikes += 1
                logger.info(
                    "loss spike at step %d: %.4g (EMA %.4g)", self._steps, loss, self._loss_mean
                )
            delta = loss - self._loss_mean
            self._loss_mean += (1 - config.ema_alpha) * delta
            self._loss_var = config.ema_alpha * (self._loss_var + (1 - config.ema_alpha) * delta**2)
        self._finite_losses += 1

        if (
            self._initial_loss > 0
            and self._loss_mean > config.divergence_factor * self._initial_loss
        ):
            self._steps_above_start += 1
        else:
            self._steps_above_start = 0
        if self._steps_above_start >= config.divergence_patience and not self._diverged:
            self._diverged = True
            logger.warning(
                "training diverged at step %d: loss EMA %.4g stayed above %g x the first loss %.4g",
                self._steps,
                self._loss_mean,
                config.divergence_factor,
                self._initial_loss,
            )

    def _is_spike(self, loss: float) -> bool:
        rise = loss - self._loss_mean
        if rise <= self.config.spike_min_rise * abs(self._loss_mean):
            return False
        std = math.sqrt(self._loss_var)
        return std == 0.0 or rise / std > self.config.spike_z

    @property
    def diverged(self) -> bool:
        """Whether the run has diverged; once true it stays true."""
        return self._diverged

    def instability_score(self) -> float:
        """The score described in the class docstring."""
        if self._diverged:
            return 1.0
        if self._steps == 0:
            return 0.0
        exponent = (
            self.config.spike_weight * self._loss_spikes
            + self.config.nonfinite_weight * self._bad_steps
        ) / self._steps
        return min(MAX_SCORE_WITHOUT_DIVERGENCE, 1.0 - math.exp(-exponent))

    def report(self) -> StabilityReport:
        """Everything counted so far."""
        norms = list(self._grad_norms)
        return StabilityReport(
            steps=self._steps,
            loss_spikes=self._loss_spikes,
            nonfinite_steps=self._nonfinite_steps,
            clipped_steps=self._clipped_steps,
            skipped_steps=self._skipped_steps,
            clipped_fraction=self._clipped_steps / self._steps if self._steps else 0.0,
            grad_norm_p50=percentile(norms, 50.0),
            grad_norm_p95=percentile(norms, 95.0),
            grad_norm_max=self._grad_norm_max,
            instability_score=self.instability_score(),
            diverged=self._diverged,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly; plain Python values."""
        return {
            "steps": self._steps,
            "loss_spikes": self._loss_spikes,
            "nonfinite_steps": self._nonfinite_steps,
            "clipped_steps": self._clipped_steps,
            "skipped_steps": self._skipped_steps,
            "bad_steps": self._bad_steps,
            "finite_losses": self._finite_losses,
            "initial_loss": self._initial_loss,
            "loss_mean": self._loss_mean,
            "loss_var": self._loss_var,
            "steps_above_start": self._steps_above_start,
            "diverged": self._diverged,
            "grad_norms": list(self._grad_norms),
            "grad_norm_max": self._grad_norm_max,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a smaller window keeps the newest gradient norms)."""
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"stability state must have keys {sorted(expected)}, got {sorted(state)}"
            )
        for name in expected - {"diverged", "grad_norms"}:
            setattr(self, f"_{name}", state[name])
        self._diverged = bool(state["diverged"])
        self._grad_norms = deque(
            (float(norm) for norm in state["grad_norms"]), maxlen=self.config.grad_norm_window
        )
