"""Precision policies on the real CPU autocast and GradScaler (and CUDA when present)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from policies import NoClipping
from policies.precision import PRECISIONS, PrecisionPolicy, build_precision
from train_loops.loop import train_step as loop_train_step

CPU = torch.device("cpu")


def poison_next_backward(model: nn.Module) -> None:
    """Make the next backward write inf into one element of the first parameter's gradient,
    as an overflow in backward would (a tensor hook, removed once it fired)."""
    parameter = next(model.parameters())

    def poison(grad: torch.Tensor) -> torch.Tensor:
        handle.remove()
        grad = grad.clone()
        grad.view(-1)[0] = float("inf")
        return grad

    handle = parameter.register_hook(poison)


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def train_step(
    precision: PrecisionPolicy, model: nn.Module, optimizer: torch.optim.Optimizer, poison=False
) -> tuple[torch.Tensor, bool]:
    """The training loop's own step (``train_loops.loop.train_step``) on a fixed batch;
    ``poison`` puts an inf into one gradient during backward. Returns the autocast output of
    the batch (for its dtype) and whether the optimizer stepped."""
    x = torch.linspace(-1, 1, 32, device=precision.device).reshape(8, 4)
    labels = torch.zeros(8, dtype=torch.long, device=precision.device)
    with precision.autocast():
        output = model(x)
    if poison:
        poison_next_backward(model)
    outcome = loop_train_step(model, x, labels, optimizer, precision, NoClipping())
    assert outcome.scaler_overflow == (poison and precision.scales_loss)
    return output, outcome.stepped


@pytest.mark.parametrize("name", sorted(PRECISIONS))
def test_autocast_computes_in_the_named_dtype(name: str) -> None:
    precision = build_precision(name, CPU)
    assert precision.name == name and precision.dtype == PRECISIONS[name]
    model = nn.Linear(4, 2)
    output, stepped = train_step(precision, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert output.dtype == PRECISIONS[name]
    assert stepped
    assert precision.skipped_steps == 0
    assert model.weight.dtype == torch.float32  # master weights stay fp32


@pytest.mark.parametrize(("name", "scale"), [("fp32", 1.0), ("bf16", 1.0), ("fp16", 65536.0)])
def test_only_fp16_scales_the_loss(name: str, scale: float) -> None:
    precision = build_precision(name, "cpu")
    assert precision.loss_scale == scale
    model = nn.Linear(4, 2)
    x = torch.ones(1, 4)
    with precision.autocast():
        loss = model(x).float().mean()
    precision.backward(loss)
    # d(mean of 2 outputs)/dW = x / 2 per row, times the scale (65536 / 2 still fits in fp16)
    torch.testing.assert_close(model.weight.grad, torch.full((2, 4), 0.5 * scale))
    precision.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
    torch.testing.assert_close(model.weight.grad, torch.full((2, 4), 0.5))


def test_fp32_autocast_is_a_no_op_inside_outer_code() -> None:
    with build_precision("fp32", CPU).autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_fp16_skips_steps_with_overflowed_gradients() -> None:
    precision = build_precision("fp16", CPU)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = model.weight.detach().clone()
    _, stepped = train_step(precision, model, optimizer, poison=True)
    assert not stepped
    assert precision.skipped_steps == 1
    assert precision.loss_scale == 32768.0  # backed off by half
    assert torch.equal(model.weight, weights)
    _, stepped = train_step(precision, model, optimizer)
    assert stepped and precision.skipped_steps == 1
    assert not torch.equal(model.weight, weights)


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_step_refuses_a_nonfinite_update_without_a_scaler(name: str) -> None:
    precision = build_precision(name, CPU)
    model = nn.Linear(4, 2)
    weights = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _, stepped = train_step(precision, model, optimizer, poison=True)
    assert not stepped and torch.equal(model.weight, weights)  # refused before the update
    assert precision.skipped_steps == 0 and precision.loss_scale == 1.0  # not a scaler skip
    _, stepped = train_step(precision, model, optimizer)
    assert stepped and not torch.equal(model.weight, weights)


@pytest.mark.parametrize("name", sorted(PRECISIONS))
def test_state_round_trips(name: str) -> None:
    precision = build_precision(name, CPU)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(precision, model, optimizer, poison=True)
    train_step(precision, model, optimizer)
    restored = build_precision(name, CPU)
    restored.load_state_dict(round_trip(precision.state_dict()))
    assert restored.state_dict() == precision.state_dict()
    assert restored.loss_scale == precision.loss_scale
    assert restored.skipped_steps == precision.skipped_steps


def test_state_of_another_precision_is_refused() -> None:
    state = build_precision("fp16", CPU).state_dict()
    with pytest.raises(ValueError, match="saved for 'fp16'"):
        build_precision("bf16", CPU).load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        build_precision("fp16", CPU).load_state_dict({"scaler": {}})


def test_unknown_precision_is_named() -> None:
    with pytest.raises(ValueError, match="'fp8'"):
        build_precision("fp8", CPU)


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_reduced_precision_on_a_device_without_autocast_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"precision '{name}' is supported on"):
        build_precision(name, torch.device("meta"))
    assert build_precision("fp32", torch.device("meta")).loss_scale == 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_cuda_precision_without_cuda_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        build_precision(name, torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(PRECISIONS))
def test_cuda_train_step(name: str) -> None:
    device = torch.device("cuda")
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        with pytest.raises(ValueError, match="bf16"):
            build_precision(name, device)
        return
    precision = build_precision(name, device)
    model = nn.Linear(4, 2).to(device)
    output, stepped = train_step(precision, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert output.dtype == PRECISIONS[name] and stepped
