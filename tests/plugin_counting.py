"""A model factory that records every training start, for resume tests
(``model: {name: "tests.plugin_counting:counted_mlp", options: {starts: DIR}}``).

Each build inside a Tune trial (one per training run: a fresh start or a resume from a
checkpoint) appends the trial's id to ``DIR/starts.log``, so a test can count how often each
trial started training. ``step_seconds`` slows each training forward inside a trial down, so
a test can catch a trial mid-run; builds outside a trial (the probe, the cost calibration)
are neither logged nor slowed."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from train_loops.models import ModelSpec, build_model


class Slowed(nn.Module):
    """Wraps a model; every training-mode forward first sleeps ``seconds``."""

    def __init__(self, inner: nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner = inner
        self.head = inner.head
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(self.seconds)
        return self.inner(x)


def counted_mlp(
    num_features: int, num_classes: int, starts: str, step_seconds: float = 0.0, **options
) -> nn.Module:
    """The zoo's MLP (``options`` go to it), logged and slowed inside a Tune trial."""
    model = build_model(ModelSpec("mlp", options), num_features, num_classes)
    trial_id = _tune_trial_id()
    if trial_id is None:
        return model
    with open(Path(starts) / "starts.log", "a") as log:
        log.write(f"{trial_id}\n")
    return Slowed(model, step_seconds)


def _tune_trial_id() -> str | None:
    import warnings

    import ray.tune

    with warnings.catch_warnings():  # outside a trial Ray warns and returns None
        warnings.simplefilter("ignore")
        return ray.tune.get_context().get_trial_id()
