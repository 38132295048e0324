"""Activation checkpointing: fewer bytes saved for backward, the same gradients, same names."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from policies.activation_checkpointing import ActivationCheckpointing, SavedTensorBytes


class Block(nn.Module):
    """A pre-norm residual MLP block, like the model zoo's."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, 4 * width)
        self.project = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(nn.functional.gelu(self.expand(self.norm(x))))


class BlockModel(nn.Module):
    def __init__(self, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def model_pair(depth: int = 4) -> tuple[BlockModel, BlockModel]:
    torch.manual_seed(0)
    plain = BlockModel(depth=depth)
    return plain, copy.deepcopy(plain)


def saved_bytes_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with SavedTensorBytes() as counter:
        loss = model(x).square().mean()
    loss.backward()
    return counter.bytes, {name: p.grad for name, p in model.named_parameters()}


def test_checkpointing_every_block_cuts_saved_bytes_and_keeps_gradients() -> None:
    plain, checkpointed = model_pair(depth=4)
    assert ActivationCheckpointing(every=1).apply(checkpointed.blocks) == [0, 1, 2, 3]
    x = torch.randn(64, 32)
    plain_bytes, plain_grads = saved_bytes_and_grads(plain, x)
    checkpointed_bytes, checkpointed_grads = saved_bytes_and_grads(checkpointed, x)
    assert plain_bytes >= 2 * checkpointed_bytes
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-6)


def test_checkpointing_every_second_block_saves_in_between() -> None:
    plain, every_second = model_pair(depth=4)
    every_block = copy.deepcopy(plain)
    ActivationCheckpointing(every=2).apply(every_second.blocks)
    ActivationCheckpointing(every=1).apply(every_block.blocks)
    x = torch.randn(64, 32)
    counts = [saved_bytes_and_grads(m, x)[0] for m in (plain, every_second, every_block)]
    assert counts[0] > counts[1] > counts[2]


def test_names_and_state_dict_keys_do_not_change() -> None:
    plain, checkpointed = model_pair()
    ActivationCheckpointing(every=1).apply(checkpointed.blocks)
    assert [n for n, _ in checkpointed.named_parameters()] == [
        n for n, _ in plain.named_parameters()
    ]
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(checkpointed.state_dict())


def test_inactive_in_eval_mode_and_without_grad() -> None:
    plain, checkpointed = model_pair()
    ActivationCheckpointing(every=1).apply(checkpointed.blocks)
    x = torch.randn(8, 32)
    plain.eval(), checkpointed.eval()
    assert saved_bytes_and_grads(checkpointed, x)[0] == saved_bytes_and_grads(plain, x)[0]
    with torch.no_grad():
        torch.testing.assert_close(checkpointed(x), plain(x))


def test_applying_twice_checkpoints_once() -> None:
    _, checkpointed = model_pair()
    policy = ActivationCheckpointing(every=1)
    policy.apply(checkpointed.blocks)
    x = torch.randn(8, 32)
    once = saved_bytes_and_grads(checkpointed, x)[0]
    policy.apply(checkpointed.blocks)
    assert saved_bytes_and_grads(checkpointed, x)[0] == once


@pytest.mark.parametrize(
    ("every", "count", "expected"),
    [(0, 4, []), (1, 3, [0, 1, 2]), (2, 4, [1, 3]), (2, 5, [1, 3]), (3, 7, [2, 5]), (5, 4, [])],
)
def test_selected_blocks(every: int, count: int, expected: list[int]) -> None:
    assert ActivationCheckpointing(every=every).selected(count) == expected


def test_off_changes_nothing() -> None:
    plain, untouched = model_pair()
    assert ActivationCheckpointing(every=0).apply(untouched.blocks) == []
    x = torch.randn(8, 32)
    assert saved_bytes_and_grads(untouched, x)[0] == saved_bytes_and_grads(plain, x)[0]


@pytest.mark.parametrize("every", [-1, 1.5, True, "2"])
def test_bad_every_is_named(every: object) -> None:
    with pytest.raises(ValueError, match=repr(every).replace(".", r"\.")):
        ActivationCheckpointing(every=every)


def test_checkpointed_model_trains_under_ddp(tmp_path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        plain, checkpointed = model_pair()
        ActivationCheckpointing(every=2).apply(checkpointed.blocks)
        wrapped = nn.parallel.DistributedDataParallel(checkpointed)
        x = torch.randn(16, 32)
        _, plain_grads = saved_bytes_and_grads(plain, x)
        _, ddp_grads = saved_bytes_and_grads(wrapped, x)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(ddp_grads[f"module.{name}"], grad, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_saved_bytes_hand_computed() -> None:
    x = torch.randn(100, requires_grad=True)  # 400 bytes
    with SavedTensorBytes() as counter:
        (x * x).sum()  # mul saves x twice: one storage
    assert counter.bytes == 400
    with SavedTensorBytes() as counter:
        x.exp().sum()  # exp saves its 400-byte result
        x[:10].sin().sum()  # a view of x saves x's whole storage: 400 more
    assert counter.bytes == 800
    with torch.no_grad(), SavedTensorBytes() as counter:
        x.exp()
    assert counter.bytes == 0
