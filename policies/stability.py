"""Stability detector: watches loss, gradient norm and validation loss step by step, counts what
went wrong, declares divergence so a run can stop early, and condenses it into one score.

What it scores is what a practitioner looks at on a training dashboard: loss spikes and
gradient-norm spikes (both against a robust running baseline), non-finite steps, loss-scale
backoffs *after* the fp16 scaler's initial calibration, divergence, and whether the run learned
at all. Severity and frequency both count.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Mapping
from typing import Any

from policies.stability_config import (
    MAD_TO_SIGMA,
    MAX_SCORE_WITHOUT_DIVERGENCE,
    MIN_SPREAD,
    StabilityConfig,
    StabilityReport,
    percentile,
    robust_z,
)

__all__ = [
    "MAD_TO_SIGMA",
    "MAX_SCORE_WITHOUT_DIVERGENCE",
    "StabilityConfig",
    "StabilityDetector",
    "StabilityReport",
    "percentile",
    "robust_z",
]

logger = logging.getLogger(__name__)


class StabilityDetector:
    """Fed once per optimizer step (and once per validation), tracks how stable training is.

    **Spikes.** Loss and gradient norm each keep a window of their last ``window`` finite values
    (gradient norms as ``log``). After ``warmup_steps`` values, a new value ``x`` is a spike when
    its robust z-score ``z = (x - median) / (1.4826 MAD)`` over the window exceeds ``spike_z``,
    and, for the loss, ``x - median > loss_spike_min_rise * max(median, 0.1 * first loss)``;
    for the gradient norm, ``norm > grad_spike_min_ratio * median norm``. Its severity is
    ``min(max_severity, z / spike_z)``. Spikes enter the window too, so a loss that jumps and
    stays up keeps counting until the baseline catches up: an unrecovered spike costs more than
    a recovered one. Gradient norms are taken before clipping, so an explosion that clipping
    held still counts (less than loss spikes, by weight).

    **Bad steps.** A non-finite loss or gradient norm that the fp16 loss scaler did not handle,
    and a scaler overflow after calibration (a *backoff*). Overflows before the scaler's first
    successful step, or right after it raised its scale, are calibration and are not scored.

    **Divergence** (sticky, so a run can stop early): a non-finite loss; the loss EMA above
    ``divergence_factor`` x the first finite loss for ``divergence_patience`` steps; or
    ``divergence_patience`` consecutive bad steps after the first successful update.

    **Progress.** :meth:`observe_validation` is given the validation loss before training and at
    each evaluation; ``loss_reduction = (first - latest) / first``. Without validation losses
    the medians of the first and the last ``warmup_steps`` training losses stand in.

    **Instability score**, in [0, 1]::

        1.0                                               if diverged
        min(0.99, 1 - exp(-E))                            otherwise, where
        E = (w_loss * S_loss + w_grad * S_grad + w_bad * bad + w_recovered * S_recovered) / steps
            + w_progress * shortfall

    ``S_loss``, ``S_grad`` the summed spike severities, ``bad`` the bad steps, ``S_recovered``
    the summed severities of spikes a recovery policy acted on (:meth:`spike_severity` judged
    them before the update, :meth:`record_recovered_spike` counted them), and
    ``shortfall = clip((min_loss_reduction - loss_reduction) / min_loss_reduction, 0, 1)``.
    A smooth run that learned scores exactly 0.0; one mild spike in 200 steps about 0.05;
    a spike every ten steps about 0.6; a run that learned nothing at least 0.63.

    >>> detector = StabilityDetector(StabilityConfig())
    >>> detector.update(loss=2.3, grad_norm=1.2, clipped=False, skipped=False)
    >>> detector.report().instability_score
    0.0
    """

    def __init__(self, config: StabilityConfig | None = None) -> None:
        self.config = config if config is not None else StabilityConfig()
        window = self.config.window
        self._steps = 0
        self._loss_spikes = 0
        self._loss_spike_severity = 0.0
        self._grad_norm_spikes = 0
        self._grad_norm_spike_severity = 0.0
        self._nonfinite_steps = 0
        self._clipped_steps = 0
        self._skipped_steps = 0
        self._recovered_spikes = 0
        self._recovered_spike_severity = 0.0
        self._scaler_calibration_skips = 0
        self._scaler_backoffs = 0
        self._stepped_once = False
        self._scale_just_grew = False
        self._last_loss_scale = 0.0
        self._consecutive_bad = 0
        self._finite_losses = 0
        self._initial_loss = 0.0
        self._loss_ema = 0.0
        self._steps_above_start = 0
        self._diverged = False
        self._loss_window: deque[float] = deque(maxlen=window)
        self._log_norm_window: deque[float] = deque(maxlen=window)
        self._first_losses: list[float] = []
        self._grad_norms: deque[float] = deque(maxlen=self.config.grad_norm_window)
        self._grad_norm_max = 0.0
        self._validations = 0
        self._initial_val_loss = 0.0
        self._latest_val_loss = 0.0

    # -- feeding -------------------------------------------------------------------------------

    def update(
        self,
        *,
        loss: float,
        grad_norm: float,
        clipped: bool,
        skipped: bool,
        scaler_overflow: bool = False,
        loss_scale: float | None = None,
    ) -> None:
        """Record one optimizer step. ``skipped``: the update was not applied.
        ``scaler_overflow``: the fp16 loss scaler skipped it (its gradients overflowed);
        ``loss_scale``: the scale after the step, to tell growth probes from backoffs.
        Tensors are accepted too (they are read to the host)."""
        loss, grad_norm = float(loss), float(grad_norm)
        clipped, skipped, scaler_overflow = bool(clipped), bool(skipped), bool(scaler_overflow)
        self._steps += 1
        self._clipped_steps += clipped
        self._skipped_steps += skipped or scaler_overflow
        loss_finite, norm_finite = math.isfinite(loss), math.isfinite(grad_norm)

        bad = False
        if scaler_overflow:
            if not self._stepped_once or self._scale_just_grew:
                self._scaler_calibration_skips += 1
            else:
                self._scaler_backoffs += 1
                bad = True
        elif not (loss_finite and norm_finite):
            self._nonfinite_steps += 1
            bad = True
        if not (skipped or scaler_overflow):
            self._stepped_once = True
        self._note_loss_scale(loss_scale)
        self._consecutive_bad = self._consecutive_bad + 1 if bad else 0
        if self._stepped_once and self._consecutive_bad >= self.config.divergence_patience:
            self._declare_divergence(f"{self._consecutive_bad} consecutive bad steps")

        if norm_finite and not scaler_overflow:
            self._observe_grad_norm(grad_norm)
        if loss_finite:
            self._observe_loss(loss)
        else:
            self._declare_divergence(f"loss is {loss}")

    def observe_validation(self, val_loss: float) -> None:
        """Record a validation loss: the first call is the loss before training."""
        val_loss = float(val_loss)
        if not math.isfinite(val_loss):
            val_loss = math.inf
        if self._validations == 0:
            self._initial_val_loss = val_loss
        self._latest_val_loss = val_loss
        self._validations += 1

    def _note_loss_scale(self, loss_scale: float | None) -> None:
        if loss_scale is None:
            return
        loss_scale = float(loss_scale)
        self._scale_just_grew = self._last_loss_scale > 0 and loss_scale > self._last_loss_scale
        self._last_loss_scale = loss_scale

    def _observe_grad_norm(self, grad_norm: float) -> None:
        self._grad_norms.append(grad_norm)
        self._grad_norm_max = max(self._grad_norm_max, grad_norm)
        if grad_norm <= 0.0:
            return
        severity = self._grad_norm_severity(grad_norm)
        if severity:
            self._grad_norm_spikes += 1
            self._grad_norm_spike_severity += severity
            logger.info(
                "gradient-norm spike at step %d: %.4g (severity %.2f)",
                self._steps,
                grad_norm,
                severity,
            )
        self._log_norm_window.append(math.log(grad_norm))

    def _grad_norm_severity(self, grad_norm: float) -> float:
        """The spike severity of a finite gradient norm against the baseline (0: no spike)."""
        config = self.config
        window = self._log_norm_window
        if grad_norm <= 0.0 or len(window) < config.warmup_steps:
            return 0.0
        value = math.log(grad_norm)
        z, median = robust_z(value, window, MIN_SPREAD)
        if z > config.spike_z and value - median >= math.log(config.grad_spike_min_ratio):
            return min(config.max_severity, z / config.spike_z)
        return 0.0

    def _loss_severity(self, loss: float) -> float:
        """The spike severity of a finite loss against the baseline (0: no spike)."""
        config = self.config
        window = self._loss_window
        if len(window) < config.warmup_steps:
            return 0.0
        scale = abs(self._initial_loss) or 1.0
        z, median = robust_z(loss, window, MIN_SPREAD * scale)
        floor = max(abs(median), 0.1 * abs(self._initial_loss))
        if z > config.spike_z and loss - median > config.loss_spike_min_rise * floor:
            return min(config.max_severity, z / config.spike_z)
        return 0.0

    def _observe_loss(self, loss: float) -> None:
        config = self.config
        if self._finite_losses == 0:
            self._initial_loss = self._loss_ema = loss
        else:
            delta = loss - self._loss_ema
            self._loss_ema += (1 - config.ema_alpha) * delta
        self._finite_losses += 1
        if len(self._first_losses) < config.warmup_steps:
            self._first_losses.append(loss)

        severity = self._loss_severity(loss)
        if severity:
            self._loss_spikes += 1
            self._loss_spike_severity += severity
            logger.info("loss spike at step %d: %.4g (severity %.2f)", self._steps, loss, severity)
        self._loss_window.append(loss)

        if (
            self._initial_loss > 0
            and self._loss_ema > config.divergence_factor * self._initial_loss
        ):
            self._steps_above_start += 1
        else:
            self._steps_above_start = 0
        if self._steps_above_start >= config.divergence_patience:
            self._declare_divergence(
                f"loss EMA {self._loss_ema:.4g} stayed above {config.divergence_factor:g} x "
                f"the first loss {self._initial_loss:.4g}"
            )

    def spike_severity(self, loss: float, grad_norm: float | None) -> float:
        """Would this step be a spike? Its severity (0.0: no), without recording anything.

        For a recovery policy to decide *before* the update. A non-finite loss, or a
        non-finite ``grad_norm``, is a spike of ``max_severity`` (pass ``None`` for the norm
        when a loss scaler handles overflows itself)."""
        loss = float(loss)
        if not math.isfinite(loss):
            return self.config.max_severity
        severity = self._loss_severity(loss)
        if grad_norm is not None:
            grad_norm = float(grad_norm)
            if not math.isfinite(grad_norm):
                return self.config.max_severity
            severity = max(severity, self._grad_norm_severity(grad_norm))
        return severity

    def record_recovered_spike(self, severity: float) -> None:
        """Count a spike a recovery policy kept out of the weights (not a step: its values
        stay out of the baselines, and it weighs ``recovered_spike_weight`` in the score)."""
        self._recovered_spikes += 1
        self._recovered_spike_severity += float(severity)

    def declare_divergence(self, why: str) -> None:
        """Mark the run diverged (sticky), e.g. when a recovery policy gives up."""
        self._declare_divergence(why)

    def _declare_divergence(self, why: str) -> None:
        if not self._diverged:
            self._diverged = True
            logger.warning("training diverged at step %d: %s", self._steps, why)

    # -- reading -------------------------------------------------------------------------------

    @property
    def diverged(self) -> bool:
        """Whether the run has diverged; once true it stays true."""
        return self._diverged

    def loss_reduction(self) -> float:
        """See :attr:`StabilityReport.loss_reduction`."""
        if self._validations >= 1:
            first, latest = self._initial_val_loss, self._latest_val_loss
        elif self._finite_losses > len(self._first_losses) and self._first_losses:
            recent = list(self._loss_window)[-len(self._first_losses) :]
            first, latest = statistics.median(self._first_losses), statistics.median(recent)
        else:
            return 0.0
        if not math.isfinite(first) or first <= 0:
            return 0.0
        if not math.isfinite(latest):
            return -10.0
        return max(-10.0, min(1.0, (first - latest) / first))

    def stalled(self) -> bool:
        """See :attr:`StabilityReport.stalled`."""
        seen_enough = self._validations >= 2 or (
            self._validations == 0 and self._finite_losses >= 2 * self.config.warmup_steps
        )
        return seen_enough and self.loss_reduction() < self.config.min_loss_reduction

    def _progress_shortfall(self) -> float:
        needed = self.config.min_loss_reduction
        if needed <= 0 or not self.stalled():
            return 0.0
        return min(1.0, max(0.0, (needed - self.loss_reduction()) / needed))

    def instability_score(self) -> float:
        """The score described in the class docstring."""
        if self._diverged:
            return 1.0
        if self._steps == 0:
            return 0.0
        config = self.config
        bad_steps = self._nonfinite_steps + self._scaler_backoffs
        exponent = (
            config.loss_spike_weight * self._loss_spike_severity
            + config.grad_spike_weight * self._grad_norm_spike_severity
            + config.bad_step_weight * bad_steps
            + config.recovered_spike_weight * self._recovered_spike_severity
        ) / self._steps + config.progress_weight * self._progress_shortfall()
        return min(MAX_SCORE_WITHOUT_DIVERGENCE, 1.0 - math.exp(-exponent))

    def report(self) -> StabilityReport:
        """Everything counted so far."""
        norms = list(self._grad_norms)
        initial_val = self._initial_val_loss if math.isfinite(self._initial_val_loss) else 1e6
        return StabilityReport(
            steps=self._steps,
            loss_spikes=self._loss_spikes,
            loss_spike_severity=self._loss_spike_severity,
            grad_norm_spikes=self._grad_norm_spikes,
            grad_norm_spike_severity=self._grad_norm_spike_severity,
            nonfinite_steps=self._nonfinite_steps,
            clipped_steps=self._clipped_steps,
            skipped_steps=self._skipped_steps,
            recovered_spikes=self._recovered_spikes,
            recovered_spike_severity=self._recovered_spike_severity,
            scaler_calibration_skips=self._scaler_calibration_skips,
            scaler_backoffs=self._scaler_backoffs,
            clipped_fraction=self._clipped_steps / self._steps if self._steps else 0.0,
            grad_norm_p50=percentile(norms, 50.0),
            grad_norm_p95=percentile(norms, 95.0),
            grad_norm_max=self._grad_norm_max,
            initial_val_loss=initial_val,
            loss_reduction=self.loss_reduction(),
            stalled=self.stalled(),
            instability_score=self.instability_score(),
            diverged=self._diverged,
        )

    # -- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly; plain Python values."""
        state: dict[str, Any] = {}
        for name, value in vars(self).items():
            if name == "config":
                continue
            key = name.removeprefix("_")
            state[key] = list(value) if isinstance(value, deque | list) else value
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (smaller windows keep the newest values)."""
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"stability state must have keys {sorted(expected)}, got {sorted(state)}"
            )
        for key in expected:
            current = getattr(self, f"_{key}")
            value = state[key]
            if isinstance(current, deque):
                value = deque((float(v) for v in value), maxlen=current.maxlen)
            elif isinstance(current, list):
                value = [float(v) for v in value]
            elif isinstance(current, bool):
                value = bool(value)
            setattr(self, f"_{key}", value)
