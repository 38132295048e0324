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


def trace(steps: int = 300, seed: int = 0) -> tuple[list[float], list[float]]:
    """A loss that falls from 2.4 to 0.1 with shrinking minibatch noise, and gradient norms
    around 1 with log-normal noise: the shape of a healthy short run."""
    rng = random.Random(seed)
    losses = [
        2.3 * math.exp(-s / 60) + 0.1 + 0.05 * rng.gauss(0, 1) * math.exp(-s / 200)
        for s in range(steps)
    ]
    norms = [math.exp(0.2 * rng.gauss(0, 1)) for _ in range(steps)]
    return losses, norms


def one_spike(losses, norms):
    losses[150] *= 4
    losses[151] *= 2  # recovers on the next steps
    norms[150] *= 20


def repeated_spikes(losses, norms):
    for step in range(40, len(losses), 25):
        losses[step] *= 4
        norms[step] *= 20


def held_explosion(losses, norms):
    for step in range(40, len(norms), 7):  # the loss never notices: clipping held it
        norms[step] *= 50


def divergence(losses, norms):
    for step in range(150, len(losses)):
        losses[step] *= math.exp((step - 150) / 10)


def stalled(losses, norms):
    rng = random.Random(1)
    losses[:] = [2.3 + 0.05 * rng.gauss(0, 1) for _ in losses]


CASES = {
    # name: (shape the trace, fp16 calibration overflows at the start)
    "smooth": (lambda losses, norms: None, 0),
    "fp16 calibration skips only": (lambda losses, norms: None, 5),
    "one spike that recovers": (one_spike, 0),
    "gradient explosion held by clipping": (held_explosion, 0),
    "repeated spikes": (repeated_spikes, 0),
    "stalled": (stalled, 0),
    "divergence": (divergence, 0),
}


def run_case(name: str) -> StabilityReport:
    shape, overflows = CASES[name]
    losses, norms = trace()
    shape(losses, norms)
    detector = StabilityDetector(StabilityConfig())
    scale = 65536.0
    for step, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        overflow = step < overflows
        scale = scale / 2 if overflow else scale
        detector.update(
            loss=loss,
            grad_norm=math.inf if overflow else norm,
            clipped=False,
            skipped=overflow,
            scaler_overflow=overflow,
            loss_scale=scale,
        )
    return detector.report()


def test_detector_orders_labelled_runs_as_a_practitioner_would() -> None:
    reports = {name: run_case(name) for name in CASES}
    score = {name: report.instability_score for name, report in reports.items()}
    assert score["smooth"] == 0.0
    assert score["fp16 calibration skips only"] == 0.0
    assert reports["fp16 calibration skips only"].scaler_calibration_skips == 5
    assert reports["fp16 calibration skips only"].scaler_backoffs == 0
    assert 0.0 < score["one spike that recovers"] < 0.15
    assert (
        score["one spike that recovers"]
        < score["gradient explosion held by clipping"]
        < score["repeated spikes"]
        < score["divergence"]
        == 1.0
    )
    assert reports["gradient explosion held by clipping"].loss_spikes == 0
    assert reports["gradient explosion held by clipping"].grad_norm_spikes > 30
    assert reports["repeated spikes"].loss_spikes >= 10
    assert score["repeated spikes"] >= 0.3  # "unstable" in the search's terms
    assert reports["stalled"].stalled and score["stalled"] >= 0.6
    assert not any(reports[name].stalled for name in CASES if name not in ("stalled", "divergence"))
    assert reports["divergence"].diverged
    for report in reports.values():
        assert_all_finite(report)


def test_backoff_after_calibration_is_scored() -> None:
    losses, norms = trace(100)
    detector = StabilityDetector(StabilityConfig())
    for step, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        overflow = step in (0, 1, 50, 70)  # two calibration skips, then two mid-run backoffs
        detector.update(
            loss=loss,
            grad_norm=math.inf if overflow else norm,
            clipped=False,
            skipped=overflow,
            scaler_overflow=overflow,
            loss_scale=1024.0,
        )
    report = detector.report()
    assert (report.scaler_calibration_skips, report.scaler_backoffs) == (2, 2)
    assert report.nonfinite_steps == 0
    assert report.instability_score == pytest.approx(1 - math.exp(-20.0 * 2 / 100))


def test_overflow_right_after_the_scale_grew_is_a_probe_not_a_backoff() -> None:
    detector = StabilityDetector(StabilityConfig())
    detector.update(loss=2.0, grad_norm=1.0, clipped=False, skipped=False, loss_scale=1024.0)
    detector.update(loss=2.0, grad_norm=1.0, clipped=False, skipped=False, loss_scale=2048.0)
    detector.update(
        loss=2.0,
        grad_norm=math.inf,
        clipped=False,
        skipped=True,
        scaler_overflow=True,
        loss_scale=1024.0,
    )
    assert detector.report().scaler_backoffs == 0
    assert detector.report().scaler_calibration_skips == 1


def test_validation_loss_gives_progress_and_stalling() -> None:
    learned, stuck = StabilityDetector(), StabilityDetector()
    for detector, final in ((learned, 0.3), (stuck, 2.25)):
        detector.observe_validation(2.3)
        feed(detector, [2.3] * 30)
        detector.observe_validation(final)
    assert learned.report().loss_reduction == pytest.approx((2.3 - 0.3) / 2.3)
    assert not learned.report().stalled
    assert stuck.report().stalled
    shortfall = (0.1 - (2.3 - 2.25) / 2.3) / 0.1
    assert stuck.report().instability_score == pytest.approx(1 - math.exp(-shortfall))


def test_unknown_stability_setting_is_named() -> None:
    with pytest.raises(ValueError, match="spike_zz"):
        StabilityConfig.from_mapping({"spike_zz": 3.0})
    assert StabilityConfig.from_mapping({"spike_z": 3.0}).spike_z == 3.0


def test_spikes_wait_for_warmup() -> None:
    detector = StabilityDetector(StabilityConfig(warmup_steps=20))
    feed(detector, [1.0, 1.0, 1.0, 50.0] + [1.0] * 10)
    assert detector.report().loss_spikes == 0


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
        ("loss_spike_min_rise", -0.1),
        ("grad_spike_min_ratio", 0.5),
        ("window", 4),
        ("min_loss_reduction", 1.0),
        ("divergence_factor", 1.0),
        ("divergence_patience", 2.5),
        ("grad_norm_window", 0),
        ("loss_spike_weight", math.nan),
        ("bad_step_weight", "high"),
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
    st.booleans(),
)


@FAST
@given(steps=st.lists(step_strategy, max_size=60), split=st.integers(0, 60))
def test_state_round_trips_exactly(steps, split: int) -> None:
    config = StabilityConfig(warmup_steps=3, grad_norm_window=7, divergence_patience=4)
    uninterrupted, first_half = StabilityDetector(config), StabilityDetector(config)
    for detector in (uninterrupted, first_half):
        detector.observe_validation(2.0)
    for loss, norm, clipped, skipped, overflow in steps[:split]:
        for detector in (uninterrupted, first_half):
            detector.update(
                loss=loss,
                grad_norm=norm,
                clipped=clipped,
                skipped=skipped,
                scaler_overflow=overflow,
            )
    buffer = io.BytesIO()
    torch.save(first_half.state_dict(), buffer)
    buffer.seek(0)
    resumed = StabilityDetector(config)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state_dict() == first_half.state_dict()
    for loss, norm, clipped, skipped, overflow in steps[split:]:
        for detector in (uninterrupted, resumed):
            detector.update(
                loss=loss,
                grad_norm=norm,
                clipped=clipped,
                skipped=skipped,
                scaler_overflow=overflow,
            )
            detector.observe_validation(loss)
    assert resumed.state_dict() == uninterrupted.state_dict()
    assert resumed.report() == uninterrupted.report()
    report = resumed.report()
    assert_all_finite(report)
    assert 0.0 <= report.instability_score <= 1.0
    assert (report.instability_score == 1.0) == report.diverged
    assert len(resumed.state_dict()["grad_norms"]) <= 7


def test_a_recovered_spike_scores_less_than_the_same_spike_absorbed() -> None:
    """The same trace twice: once the spike steps are fed (the model took them), once a
    recovery policy judged them before the update and kept them out."""
    losses, norms = trace()
    one_spike(losses, norms)
    absorbed, recovered = StabilityDetector(), StabilityDetector()
    for step, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        absorbed.update(loss=loss, grad_norm=norm, clipped=False, skipped=False)
        severity = recovered.spike_severity(loss, norm)
        if step in (150, 151):
            assert step == 151 or severity > 0
        if severity:
            recovered.record_recovered_spike(severity)
        else:
            recovered.update(loss=loss, grad_norm=norm, clipped=False, skipped=False)
    absorbed_report, recovered_report = absorbed.report(), recovered.report()
    assert absorbed_report.loss_spikes >= 1 and recovered_report.loss_spikes == 0
    assert recovered_report.recovered_spikes >= 1
    assert 0 < recovered_report.instability_score < absorbed_report.instability_score
