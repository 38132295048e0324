"""Clipping policies: one contract suite over every method, hand-computed values for each rule,
property tests of their invariants, and the factory's validation."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from policies.clipping import (
    CLIP_METHODS,
    AdaptiveGradientClipping,
    AutoClip,
    ClipByNorm,
    ClipByValue,
    ClipPolicy,
    ClipReport,
    NoClipping,
    ZClip,
    build_clip_policy,
)
from policies.clipping.agc import unitwise_norm

FAST = settings(max_examples=30, deadline=None)

# One config per method, chosen so that each clips the gradients the contract tests produce.
CONTRACT_CONFIGS = {
    "none": {"method": "none"},
    "norm": {"method": "norm", "max_norm": 0.5},
    "value": {"method": "value", "clip_value": 0.05},
    "agc": {"method": "agc", "clipping": 0.01, "exclude": ["head"]},
    "autoclip": {"method": "autoclip", "percentile": 10.0, "window": 4},
    "zclip": {"method": "zclip", "warmup_steps": 2, "alpha": 0.9},
}


class TinyClassifier(nn.Module):
    """Two blocks and a ``head``, named like the model zoo's classifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def backward(model: nn.Module, scale: float = 1.0, seed: int = 0) -> None:
    """Fill ``model``'s gradients from a fixed batch; ``scale`` multiplies the loss."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=generator)
    y = torch.randint(0, 3, (16,), generator=generator)
    model.zero_grad(set_to_none=True)
    (scale * nn.functional.cross_entropy(model(x), y)).backward()


def grads_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def total_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def with_grads(*grads: list[float] | list[list[float]]) -> list[nn.Parameter]:
    """Parameters of weight 1 whose gradients are the given values."""
    parameters = []
    for grad in grads:
        grad = torch.tensor(grad, dtype=torch.float32)
        parameter = nn.Parameter(torch.ones_like(grad))
        parameter.grad = grad
        parameters.append(parameter)
    return parameters


def round_trip(state: dict) -> dict:
    """``state`` through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        if isinstance(first[key], torch.Tensor):
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, equal_nan=True)
        else:
            assert first[key] == second[key]


# --- the contract every policy satisfies --------------------------------------------------------


def test_contract_covers_every_method() -> None:
    assert set(CONTRACT_CONFIGS) == set(CLIP_METHODS)


@pytest.fixture(params=sorted(CONTRACT_CONFIGS))
def method(request: pytest.FixtureRequest) -> str:
    return request.param


def warmed_up(method: str) -> tuple[nn.Module, ClipPolicy]:
    """A model and its policy after a few calls, so stateful policies have state."""
    torch.manual_seed(0)
    model = TinyClassifier()
    policy = build_clip_policy(CONTRACT_CONFIGS[method], model)
    for seed in range(3):
        backward(model, seed=seed)
        policy(model.parameters())
    return model, policy


def test_contract_reports_norm_before_clipping(method: str) -> None:
    model, policy = warmed_up(method)
    assert isinstance(policy, ClipPolicy)
    backward(model, scale=50.0, seed=7)
    before = grads_of(model)
    report = policy(model.parameters())  # a generator is accepted
    assert isinstance(report, ClipReport)
    assert report.grad_norm.shape == () and report.clipped.shape == ()
    assert report.clipped.dtype == torch.bool
    assert report.grad_norm.item() == pytest.approx(total_norm(before), rel=1e-5)
    after = grads_of(model)
    changed = any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert bool(report.clipped) == changed
    assert total_norm(after) <= total_norm(before) * (1 + 1e-6)
    assert bool(report.clipped) == (method != "none")


def test_contract_skips_parameters_without_grad(method: str) -> None:
    model, policy = warmed_up(method)
    backward(model, scale=50.0)
    model.head.weight.grad = None
    expected = total_norm(grads_of(model))
    report = policy(list(model.parameters()))
    assert model.head.weight.grad is None
    assert report.grad_norm.item() == pytest.approx(expected, rel=1e-5)


def test_contract_no_gradients_at_all(method: str) -> None:
    model, policy = warmed_up(method)
    model.zero_grad(set_to_none=True)
    state_before = round_trip(policy.state_dict())
    report = policy(model.parameters())
    assert report.grad_norm.item() == 0.0
    assert not report.clipped
    assert_same_state(state_before, policy.state_dict())


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_contract_nonfinite_norm_changes_nothing(method: str, bad: float) -> None:
    model, policy = warmed_up(method)
    backward(model, scale=50.0)
    model.blocks[0].weight.grad[0, 0] = bad
    before, state_before = grads_of(model), round_trip(policy.state_dict())
    report = policy(model.parameters())
    assert not math.isfinite(report.grad_norm.item())
    assert not report.clipped
    for b, a in zip(before, grads_of(model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert_same_state(state_before, policy.state_dict())


def test_contract_state_round_trips(method: str) -> None:
    model, policy = warmed_up(method)
    restored = build_clip_policy(CONTRACT_CONFIGS[method], model)
    restored.load_state_dict(round_trip(policy.state_dict()))
    assert_same_state(policy.state_dict(), restored.state_dict())
    for seed, scale in [(3, 1.0), (4, 50.0), (5, 1.0)]:
        backward(model, scale=scale, seed=seed)
        expected = policy(model.parameters())
        clipped_by_original = grads_of(model)
        backward(model, scale=scale, seed=seed)
        actual = restored(model.parameters())
        assert bool(actual.clipped) == bool(expected.clipped)
        for a, b in zip(grads_of(model), clipped_by_original, strict=True):
            torch.testing.assert_close(a, b)


def test_contract_stateless_policies_refuse_foreign_state(method: str) -> None:
    _, policy = warmed_up(method)
    with pytest.raises(ValueError, match="bogus"):
        policy.load_state_dict({"bogus": 1})


# --- hand-computed values ----------------------------------------------------------------------


def test_norm_clips_norm_five_to_one() -> None:
    (parameter,) = with_grads([3.0, 4.0])
    report = ClipByNorm(max_norm=1.0)([parameter])
    assert report.grad_norm.item() == pytest.approx(5.0)
    assert report.clipped
    torch.testing.assert_close(parameter.grad, torch.tensor([0.6, 0.8]))


def test_norm_below_threshold_is_untouched() -> None:
    first, second = with_grads([0.3], [[0.4]])
    report = ClipByNorm(max_norm=1.0)([first, second])
    assert report.grad_norm.item() == pytest.approx(0.5)
    assert not report.clipped
    assert first.grad.item() == pytest.approx(0.3) and second.grad.item() == pytest.approx(0.4)


def test_value_clamps_elements() -> None:
    (parameter,) = with_grads([3.0, -4.0, 0.5])
    report = ClipByValue(clip_value=1.0)([parameter])
    assert report.grad_norm.item() == pytest.approx(math.sqrt(9 + 16 + 0.25))
    assert report.clipped
    torch.testing.assert_close(parameter.grad, torch.tensor([1.0, -1.0, 0.5]))


def test_agc_per_unit_rule() -> None:
    weight = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
    weight.grad = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.001, 0.0]])
    bias = nn.Parameter(torch.tensor([0.0, 2.0]))  # a vector is one unit: ||W|| = 2
    bias.grad = torch.tensor([0.3, 0.4])  # ||G|| = 0.5 > 0.1 * 2
    report = AdaptiveGradientClipping(clipping=0.1, eps=1e-3)([weight, bias])
    assert report.clipped
    assert report.grad_norm.item() == pytest.approx(math.sqrt(1 + 0.25 + 1e-6 + 0.25))
    # row 0: ||W|| = 5, ||G|| = 1 > 0.5 -> scaled to norm 0.5
    # row 1: ||W|| = 0 -> eps: ||G|| = 0.5 > 0.1 * 1e-3 -> scaled to norm 1e-4
    # row 2: ||W|| = 1, ||G|| = 0.001 < 0.1 -> untouched
    expected = torch.tensor([[0.5, 0.0], [0.0, 1e-4], [0.001, 0.0]])
    torch.testing.assert_close(weight.grad, expected)
    torch.testing.assert_close(bias.grad, torch.tensor([0.12, 0.16]))


def test_agc_excludes_head_by_default() -> None:
    torch.manual_seed(0)
    model = TinyClassifier()
    agc = build_clip_policy({"method": "agc"}, model)
    assert agc == AdaptiveGradientClipping(clipping=0.01, eps=1e-3)
    backward(model, scale=100.0)
    head_before = model.head.weight.grad.clone()
    first_before = model.blocks[0].weight.grad.clone()
    assert agc(model.parameters()).clipped
    assert torch.equal(model.head.weight.grad, head_before)
    assert not torch.equal(model.blocks[0].weight.grad, first_before)


def test_agc_exclude_empty_clips_head_too() -> None:
    torch.manual_seed(0)
    model = TinyClassifier()
    agc = build_clip_policy({"method": "agc", "exclude": []}, model)
    backward(model, scale=100.0)
    head_before = model.head.weight.grad.clone()
    agc(model.parameters())
    assert not torch.equal(model.head.weight.grad, head_before)


def test_agc_prefix_matches_whole_module_names(caplog: pytest.LogCaptureFixture) -> None:
    model = TinyClassifier()
    agc = AdaptiveGradientClipping.for_model(model, exclude=["blocks.2", "head."])
    excluded = {id(p) for p in agc.excluded_parameters}
    expected = [model.blocks[2].weight, model.blocks[2].bias, model.head.weight, model.head.bias]
    assert excluded == {id(p) for p in expected}
    with caplog.at_level(logging.WARNING):
        AdaptiveGradientClipping.for_model(model, exclude=["hea"])  # not a module name
    assert "'hea' matches no parameter" in caplog.text


@pytest.fixture
def single_process_group(tmp_path):
    """A real one-process gloo group, so DistributedDataParallel can wrap a CPU model."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_agc_excludes_head_under_ddp(single_process_group) -> None:
    model = TinyClassifier()
    wrapped = nn.parallel.DistributedDataParallel(model)
    agc = build_clip_policy({"method": "agc"}, wrapped)
    assert {id(p) for p in agc.excluded_parameters} == {id(model.head.weight), id(model.head.bias)}


def test_autoclip_threshold_is_percentile_of_history() -> None:
    clip = AutoClip(percentile=50.0)
    for norm in [3.0, 1.0]:  # medians 3 and 2: neither is clipped
        (parameter,) = with_grads([norm])
        assert not clip([parameter]).clipped
    (parameter,) = with_grads([0.0, 10.0])
    report = clip([parameter])  # history [3, 1, 10]: median 3
    assert report.clipped
    assert parameter.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(clip.state_dict()["history"], torch.tensor([3.0, 1.0, 10.0]))


def test_autoclip_window_interpolates_like_numpy() -> None:
    clip = AutoClip(percentile=10.0, window=2)
    for norm in [100.0, 3.0]:
        clip(with_grads([norm]))
    (parameter,) = with_grads([10.0])
    clip([parameter])  # window [3, 10]: 3 + 0.1 * (10 - 3) = 3.7
    assert parameter.grad.item() == pytest.approx(3.7, rel=1e-5)
    torch.testing.assert_close(clip.state_dict()["history"], torch.tensor([3.0, 10.0]))


def test_autoclip_unbounded_history_grows_past_initial_capacity() -> None:
    clip = AutoClip(percentile=100.0)
    for step in range(150):
        clip(with_grads([float(step)]))
    torch.testing.assert_close(clip.state_dict()["history"], torch.arange(150.0))


@pytest.mark.parametrize(
    ("mode", "expected_norm"),
    [("reciprocal", 2.0 + 2.5**2 / 8.0), ("zscore", 2.0 + 2.5)],
)
def test_zclip_hand_computed(mode: str, expected_norm: float) -> None:
    clip = ZClip(alpha=0.97, z_threshold=2.5, warmup_steps=2, mode=mode)
    for norm in [1.0, 3.0]:  # warm-up: mean 2, variance 1 (population)
        assert not clip(with_grads([norm])).clipped
    state = clip.state_dict()
    assert state["mean"].item() == pytest.approx(2.0) and state["var"].item() == pytest.approx(1.0)
    (parameter,) = with_grads([10.0])  # z = (10 - 2) / 1 = 8
    report = clip([parameter])
    assert report.clipped and report.grad_norm.item() == pytest.approx(10.0)
    assert parameter.grad.item() == pytest.approx(expected_norm, rel=1e-5)
    mean = 0.97 * 2.0 + 0.03 * expected_norm  # EMA updated with the clipped norm
    var = 0.97 * 1.0 + 0.03 * (expected_norm - mean) ** 2
    state = clip.state_dict()
    assert state["mean"].item() == pytest.approx(mean, rel=1e-6)
    assert state["var"].item() == pytest.approx(var, rel=1e-6)
    assert state["steps"] == 3


def test_zclip_never_clips_during_warmup() -> None:
    clip = ZClip(warmup_steps=3)
    for norm in [1.0, 1000.0, 1.0]:
        (parameter,) = with_grads([norm])
        assert not clip([parameter]).clipped
        assert parameter.grad.item() == norm
    (parameter,) = with_grads([1e5])  # mean 334, std 471: z > 200
    assert clip([parameter]).clipped


def test_zclip_warmup_hard_cap_clips_warmup_norms_above_it() -> None:
    clip = ZClip(warmup_steps=3, warmup_max_norm=10.0)
    outcomes = []
    for norm in [1.0, 1000.0, 4.0]:
        (parameter,) = with_grads([norm])
        outcomes.append((bool(clip([parameter]).clipped), parameter.grad.item()))
    assert outcomes[0] == (False, 1.0) and outcomes[2] == (False, 4.0)
    assert outcomes[1][0] and outcomes[1][1] == pytest.approx(10.0, rel=1e-5)
    state = clip.state_dict()  # the EMA starts from the capped norms: 1, 10, 4
    assert state["mean"].item() == pytest.approx(5.0, rel=1e-5)


def test_zclip_warmup_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="warmup_max_norm"):
        ZClip(warmup_max_norm=0.0)


# --- invariants --------------------------------------------------------------------------------

finite_values = st.floats(-1e4, 1e4, allow_nan=False, width=32)
gradient_lists = st.lists(st.lists(finite_values, min_size=1, max_size=12), min_size=1, max_size=4)
thresholds = st.floats(2**-10, 2**10, width=32)  # exact in float32, the gradients' dtype


@FAST
@given(grads=gradient_lists, max_norm=thresholds)
def test_norm_clipping_bounds_the_global_norm(grads: list[list[float]], max_norm: float) -> None:
    parameters = with_grads(*grads)
    originals = [p.grad.clone() for p in parameters]
    report = ClipByNorm(max_norm=max_norm)(parameters)
    if report.clipped:
        assert total_norm([p.grad for p in parameters]) <= max_norm * (1 + 1e-6)
    else:
        assert report.grad_norm.item() <= max_norm
        for parameter, original in zip(parameters, originals, strict=True):
            assert torch.equal(parameter.grad, original)


@FAST
@given(grads=gradient_lists, clip_value=thresholds)
def test_value_clipping_bounds_every_element(grads: list[list[float]], clip_value: float) -> None:
    parameters = with_grads(*grads)
    originals = [p.grad.clone() for p in parameters]
    ClipByValue(clip_value=clip_value)(parameters)
    for parameter, original in zip(parameters, originals, strict=True):
        assert parameter.grad.abs().max().item() <= clip_value
        small = original.abs() <= clip_value
        assert torch.equal(parameter.grad[small], original[small])


@FAST
@given(
    shape=st.sampled_from([(5,), (4, 3), (2, 3, 2, 2)]),
    seed=st.integers(0, 2**16),
    grad_scale=st.floats(1e-4, 1e4),
    clipping=st.floats(1e-3, 1.0),
)
def test_agc_bounds_every_unit_ratio(
    shape: tuple[int, ...], seed: int, grad_scale: float, clipping: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.randn(shape, generator=generator))
    weight.data[0] = 0.0  # a unit at zero exercises the eps floor
    weight.grad = torch.randn(shape, generator=generator) * grad_scale
    agc = AdaptiveGradientClipping(clipping=clipping, eps=1e-3)
    agc([weight])
    ratio = unitwise_norm(weight.grad) / unitwise_norm(weight.detach()).clamp(min=1e-3)
    assert ratio.max().item() <= clipping * (1 + 1e-5)


norm_sequences = st.lists(
    st.one_of(st.floats(1e-3, 1e3), st.sampled_from([math.inf, math.nan])), max_size=40
)


@FAST
@given(norms=norm_sequences, split=st.integers(0, 40), window=st.sampled_from([None, 1, 5]))
def test_autoclip_state_round_trips(norms: list[float], split: int, window: int | None) -> None:
    assert_stateful_round_trip(lambda: AutoClip(percentile=25.0, window=window), norms, split)


@FAST
@given(
    norms=norm_sequences, split=st.integers(0, 40), mode=st.sampled_from(["reciprocal", "zscore"])
)
def test_zclip_state_round_trips(norms: list[float], split: int, mode: str) -> None:
    assert_stateful_round_trip(lambda: ZClip(warmup_steps=3, mode=mode), norms, split)


def assert_stateful_round_trip(make, norms: list[float], split: int) -> None:
    """Saving after ``split`` norms and loading into a fresh policy continues exactly."""
    uninterrupted, first_half = make(), make()
    for norm in norms[:split]:
        uninterrupted(with_grads([norm]))
        first_half(with_grads([norm]))
    resumed = make()
    resumed.load_state_dict(round_trip(first_half.state_dict()))
    assert_same_state(first_half.state_dict(), resumed.state_dict())
    for norm in norms[split:]:
        (expected,), (actual,) = with_grads([norm]), with_grads([norm])
        assert bool(uninterrupted([expected]).clipped) == bool(resumed([actual]).clipped)
        torch.testing.assert_close(actual.grad, expected.grad, equal_nan=True)
    assert_same_state(uninterrupted.state_dict(), resumed.state_dict())


# --- the factory ---------------------------------------------------------------------------------


def test_factory_builds_each_method() -> None:
    model = TinyClassifier()
    assert build_clip_policy({"method": "none"}) == NoClipping()
    assert build_clip_policy({"method": "norm", "max_norm": 2}) == ClipByNorm(max_norm=2.0)
    assert build_clip_policy({"method": "value", "clip_value": 0.5}) == ClipByValue(0.5)
    assert build_clip_policy({"method": "agc", "clipping": 0.02}, model).clipping == 0.02
    autoclip = build_clip_policy({"method": "autoclip", "percentile": 5, "window": 100})
    assert (autoclip.percentile, autoclip.window) == (5.0, 100)
    zclip = build_clip_policy({"method": "zclip", "z_threshold": 3.0, "mode": "zscore"})
    assert (zclip.z_threshold, zclip.mode, zclip.alpha, zclip.warmup_steps) == (
        3.0,
        "zscore",
        0.97,
        25,
    )


def test_tunable_parameter_names_are_config_keys() -> None:
    model = TinyClassifier()
    for method, parameter in CLIP_METHODS.items():
        if parameter is not None:
            policy = build_clip_policy({"method": method, parameter: 0.5}, model)
            assert getattr(policy, parameter) == 0.5


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"method": "clip_everything"}, "'clip_everything'"),
        ({"max_norm": 1.0}, "'method'"),
        ({"method": "norm"}, "'max_norm'"),
        ({"method": "value"}, "'clip_value'"),
        ({"method": "norm", "max_norm": 1.0, "clip_value": 1.0}, "'clip_value'"),
        ({"method": "none", "max_norm": 1.0}, "'max_norm'"),
        ({"method": "norm", "max_norm": -1.0}, "-1.0"),
        ({"method": "norm", "max_norm": 0}, "max_norm must be > 0"),
        ({"method": "norm", "max_norm": "1.0"}, "'1.0'"),
        ({"method": "norm", "max_norm": True}, "True"),
        ({"method": "value", "clip_value": math.inf}, "inf"),
        ({"method": "agc", "clipping": 0.0}, "clipping"),
        ({"method": "agc", "eps": -1e-3}, "-0.001"),
        ({"method": "agc", "exclude": "head"}, "'head'"),
        ({"method": "agc", "exclude": [""]}, "''"),
        ({"method": "autoclip", "percentile": 101}, "101"),
        ({"method": "autoclip", "window": 0}, "window must be >= 1, got 0"),
        ({"method": "autoclip", "window": 2.5}, "2.5"),
        ({"method": "zclip", "alpha": 1.0}, "alpha must be in \\(0.0, 1.0\\), got 1.0"),
        ({"method": "zclip", "z_threshold": -2}, "-2"),
        ({"method": "zclip", "warmup_steps": 0}, "warmup_steps"),
        ({"method": "zclip", "mode": "percentile"}, "'percentile'"),
    ],
)
def test_factory_refuses_bad_configs(config: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        build_clip_policy(config, TinyClassifier())


def test_agc_without_model_needs_empty_exclude() -> None:
    with pytest.raises(ValueError, match="needs the model"):
        build_clip_policy({"method": "agc"})
    assert build_clip_policy({"method": "agc", "exclude": []}) == AdaptiveGradientClipping()
