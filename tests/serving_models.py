"""A real trained digits MLP for the serving tests (export, quantize, gate, ship).

A plain module, not a test module: import it as ``from tests.serving_models import ...``.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from train_loops.data import PreparedDataset
from train_loops.models import ModelSpec, build_model, fit_standardization


def train_digits_mlp(digits: PreparedDataset) -> nn.Module:
    """A real digits MLP (about 97% test accuracy): Adam, lr 1e-3, batch 64, 10 epochs, seeded.

    Training is seeded and the split is too, so the weights are computed once per test
    process (keyed by the training file's bytes) and each call gets its own copy.
    """
    train_bytes = digits.split_path("train").read_bytes()
    state = _trained_state(hashlib.sha256(train_bytes).hexdigest(), digits)
    model = build_model(ModelSpec("mlp"), digits.num_features, digits.num_classes)
    model.load_state_dict(state)
    return model.eval()


_TRAINED: dict[str, dict[str, torch.Tensor]] = {}


def _trained_state(key: str, digits: PreparedDataset) -> dict[str, torch.Tensor]:
    if key in _TRAINED:
        return _TRAINED[key]
    features, labels = digits.load("train")
    threads = torch.get_num_threads()
    # One thread: a few seconds; more threads only spin on a shared 2-core machine.
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(ModelSpec("mlp"), digits.num_features, digits.num_classes)
        fit_standardization(model, features)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)
        for _ in range(10):
            order = torch.randperm(len(inputs))
            for start in range(0, len(inputs), 64):
                batch = order[start : start + 64]
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    _TRAINED[key] = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    return _TRAINED[key]


def accuracy_on_test_split(model: nn.Module, digits: PreparedDataset) -> float:
    features, labels = digits.load("test")
    with torch.no_grad():
        return float((model(torch.from_numpy(features)).argmax(1).numpy() == labels).mean())
