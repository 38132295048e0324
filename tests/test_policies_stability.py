"""Stability detector: spikes, divergence and the instability score on hand-made loss curves."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.stability import (
    StabilityConfig,
    StabilityDetector,
    StabilityReport,
    percentile,
)

FAST = settings(max_examples=30, deadline=None)


def feed(detector: StabilityDetector, losses, grad_norm: float = 1.0, **flags) -> None:
    for loss in losses:
        detector.update(
            loss=loss,
            grad_norm=grad_norm,
            clipped=flags.get("clipped", False),
            skipped=flags.get("skipped", False),
        )


def smooth_losses(steps: int, seed: int = 0) -> list[float]:
    """A decreasing loss with a little minibatch noise."""
    rng = random.Random(seed)
    return [2.3 * math.exp(-step / 50) + 0.01 * rng.random() for step in range(steps)]


def assert_all_finite(report: StabilityReport) -> None:
    for name, value in report.as_metrics().items():
        assert math.isfinite(value), name


def test_smooth_run_scores_zero() -> None:
    detector = StabilityDetector(StabilityConfig())
    feed(detector, smooth_losses(200))
    report = detector.report()
    assert report.loss_spikes == 0 and report.nonfinite_steps == 0
    assert report.instability_score == 0.0
    assert not report.diverged and not detector.diverged


def test_one_spike_is_counted_and_scored() -> None:
    detector = StabilityDetector(StabilityConfig())
    losses = smooth_losses(100)
    losses[60] = 5.0  # more than twice the curve, far outside its noise
    feed(detector, losses)
    report = detector.report()
    assert report.loss_spikes == 1
    assert report.instability_score == pytest.approx(1 - math.exp(-10.0 * 1 / 100))
    assert not report.diverged


def test_spikes_wait_for_warmup() -> None:
    detector = StabilityDetector(StabilityConfig(warmup_steps=20))
    feed(detector, [1.0, 1.0, 1.0, 50.0] + [1.0] * 10)
    assert detector.report().loss_spikes == 0


def test_tiny_fluctuation_of_a_flat_loss_is_not_a_spike() -> None:
    detector = StabilityDetector(StabilityConfig(warmup_steps=5, spike_min_rise=0.1))
    feed(detector, [1.0] * 10 + [1.05])  # infinite z-score, but only 5 % above the mean
    assert detector.report().loss_spikes == 0
    feed(detector, [1.5])
    assert detector.report().loss_spikes == 1


def test_nonfinite_loss_diverges_at_once() -> None:
    detector = StabilityDetector(StabilityConfig())
    feed(detector, [2.0, 1.9, math.nan])
    assert detector.diverged
    feed(detector, [1.0] * 5)  # divergence is sticky
    report = detector.report()
    assert report.diverged and report.instability_score == 1.0
    assert report.nonfinite_steps == 1
    assert report.as_metrics()["diverged"] == 1.0
    assert_all_finite(report)


def test_loss_stuck_above_start_diverges_after_patience() -> None:
    # EMA with alpha 0.95 from 1.0 towards 100: 5.95 after one step, above 3 x 1.0 from then on.
    detector = StabilityDetector(StabilityConfig(divergence_factor=3.0, divergence_patience=10))
    feed(detector, [1.0] + [100.0] * 9)
    assert not detector.diverged  # nine steps above
    feed(detector, [100.0])
    assert detector.diverged


def test_loss_back_down_resets_patience() -> None:
    # EMA with alpha 0.5: 1, 5.5, 7.75, 3.925 (three above 3), 2.01 (reset), 6.0, 8.0, 9.0, 9.5
    detector = StabilityDetector(StabilityConfig(ema_alpha=0.5, divergence_patience=4))
    feed(detector, [1.0, 10.0, 10.0, 0.1, 0.1, 10.0, 10.0, 10.0])
    assert not detector.diverged
    feed(detector, [10.0])
    assert detector.diverged


def test_skipped_and_nonfinite_steps_count_once_each() -> None:
    detector = StabilityDetector(StabilityConfig())
    feed(detector, [2.0] * 8)
    detector.update(loss=2.0, grad_norm=math.inf, clipped=False, skipped=True)  # fp16 overflow
    detector.update(loss=2.0, grad_norm=1.0, clipped=False, skipped=True)
    detector.update(loss=2.0, grad_norm=math.nan, clipped=False, skipped=False)
    feed(detector, [2.0] * 9, clipped=True)
    report = detector.report()
    assert (report.steps, report.skipped_steps, report.nonfinite_steps) == (20, 2, 2)
    assert report.clipped_steps == 9 and report.clipped_fraction == pytest.approx(0.45)
    assert report.instability_score == pytest.approx(1 - math.exp(-20.0 * 3 / 20))
    assert_all_finite(report)


def test_score_is_capped_below_one_without_divergence() -> None:
    detector = StabilityDetector(StabilityConfig())
    for _ in range(10):
        detector.update(loss=1.0, grad_norm=math.inf, clipped=False, skipped=True)
    assert detector.report().instability_score == 0.99


def test_grad_norm_statistics() -> None:
    detector = StabilityDetector(StabilityConfig(grad_norm_window=5))
    for norm in [100.0, 1.0, 2.0, 3.0, 4.0, math.inf, 5.0]:
        detector.update(loss=1.0, grad_norm=norm, clipped=False, skipped=False)
    report = detector.report()
    assert report.grad_norm_p50 == 3.0  # window: 1, 2, 3, 4, 5
    assert report.grad_norm_p95 == pytest.approx(4.8)
    assert report.grad_norm_max == 100.0  # the whole run
    assert len(detector.state_dict()["grad_norms"]) == 5


def test_empty_report_is_zeros() -> None:
    report = StabilityDetector().report()
    metrics = report.as_metrics()
    assert set(metrics) == {
        "steps",
        "loss_spikes",
        "nonfinite_steps",
        "clipped_steps",
        "skipped_steps",
        "clipped_fraction",
        "grad_norm_p50",
        "grad_norm_p95",
        "grad_norm_max",
        "instability_score",
        "diverged",
    }
    assert all(value == 0.0 and isinstance(value, float) for value in metrics.values())


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50.0, 0.0), ([7.0], 95.0, 7.0), ([4.0, 1.0, 3.0, 2.0], 50.0, 2.5), ([0, 10], 95, 9.5)],
)
def test_percentile_interpolates_like_numpy(values, q, expected) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ema_alpha", 1.0),
        ("warmup_steps", 0),
        ("spike_z", -1.0),
        ("spike_min_rise", -0.1),
        ("divergence_factor", 1.0),
        ("divergence_patience", 2.5),
        ("grad_norm_window", 0),
        ("spike_weight", math.nan),
        ("nonfinite_weight", "high"),
    ],
)
def test_config_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        StabilityConfig(**{field: value})


def test_state_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="keys"):
        StabilityDetector().load_state_dict({"steps": 3})


step_strategy = st.tuples(
    st.one_of(st.floats(0.01, 100.0), st.sampled_from([math.inf, math.nan])),
    st.one_of(st.floats(0.0, 100.0), st.sampled_from([math.inf, math.nan])),
    st.booleans(),
    st.booleans(),
)


@FAST
@given(steps=st.lists(step_strategy, max_size=60), split=st.integers(0, 60))
def test_state_round_trips_exactly(steps, split: int) -> None:
    config = StabilityConfig(warmup_steps=3, grad_norm_window=7, divergence_patience=4)
    uninterrupted, first_half = StabilityDetector(config), StabilityDetector(config)
    for loss, norm, clipped, skipped in steps[:split]:
        for detector in (uninterrupted, first_half):
            detector.update(loss=loss, grad_norm=norm, clipped=clipped, skipped=skipped)
    buffer = io.BytesIO()
    torch.save(first_half.state_dict(), buffer)
    buffer.seek(0)
    resumed = StabilityDetector(config)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state_dict() == first_half.state_dict()
    for loss, norm, clipped, skipped in steps[split:]:
        for detector in (uninterrupted, resumed):
            detector.update(loss=loss, grad_norm=norm, clipped=clipped, skipped=skipped)
    assert resumed.state_dict() == uninterrupted.state_dict()
    assert resumed.report() == uninterrupted.report()
    report = resumed.report()
    assert_all_finite(report)
    assert 0.0 <= report.instability_score <= 1.0
    assert (report.instability_score == 1.0) == report.diverged
    assert len(resumed.state_dict()["grad_norms"]) <= 7
