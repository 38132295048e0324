"""Model factories that tests load by import path (``model: {name: "tests.plugin_models:..."}``),
in-process and inside Ray workers (which start in the repository root)."""

from __future__ import annotations

import torch
from torch import nn

from train_loops.models import ModelSpec, build_model


class FailsAfter(nn.Module):
    """Wraps a model; its ``fail_after``-th training-mode forward raises ``RuntimeError``.
    Evaluation forwards (``model.eval()``) do not count. Documented behaviour at the edge: the
    trial fails mid-run, after it has reported."""

    def __init__(self, inner: nn.Module, fail_after: int) -> None:
        super().__init__()
        self.inner = inner
        self.head = inner.head
        self.fail_after = fail_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls >= self.fail_after:
                raise RuntimeError(f"plugin model fails on training forward {self.calls}")
        return self.inner(x)


def failing_mlp(num_features: int, num_classes: int, fail_after: int = 30) -> nn.Module:
    """The zoo's MLP that raises on its ``fail_after``-th training forward."""
    return FailsAfter(build_model(ModelSpec("mlp"), num_features, num_classes), fail_after)
