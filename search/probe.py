"""The gradient probe: a short unclipped run whose gradient statistics set the clip ranges.

Norm thresholds are searched on a log scale between two quantiles of the global gradient norms
the probe saw; value thresholds between the same quantiles of per-step elementwise ``|g|``
maxima... scaled down to the quantile of ``|g|`` itself (see :func:`probe_gradients`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policies import ClipReport
from policies.clipping.base import no_clip
from search.spec import FloatRange, ProbeSection
from train_loops.config import TrainConfig

logger = logging.getLogger(__name__)

SAMPLED_ELEMENTS = 4096
"""Gradient elements sampled per step (uniformly, seeded) for the elementwise quantiles."""


class RecordingNoClip:
    """A clipping policy that clips nothing and records what it saw (for the probe only)."""

    def __init__(self, seed: int = 0) -> None:
        self.norms: list[float] = []
        self.abs_values: list[np.ndarray] = []
        self._generator = torch.Generator().manual_seed(seed)

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        grads = [p.grad.detach().float().flatten() for p in parameters if p.grad is not None]
        flat = torch.cat(grads)
        norm = torch.linalg.vector_norm(flat)
        self.norms.append(float(norm))
        index = torch.randint(
            len(flat), (min(SAMPLED_ELEMENTS, len(flat)),), generator=self._generator
        )
        self.abs_values.append(flat[index.to(flat.device)].abs().cpu().numpy())
        return no_clip(norm)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class ProbeResult:
    steps: int
    norm_quantiles: dict[str, float]
    abs_grad_quantiles: dict[str, float]
    max_norm_range: tuple[float, float]
    clip_value_range: tuple[float, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ProbeResult:
        values = json.loads(text)
        values["max_norm_range"] = tuple(values["max_norm_range"])
        values["clip_value_range"] = tuple(values["clip_value_range"])
        return cls(**values)

    def ranges(self) -> tuple[FloatRange, FloatRange]:
        return (
            FloatRange(low=self.max_norm_range[0], high=self.max_norm_range[1]),
            FloatRange(low=self.clip_value_range[0], high=self.clip_value_range[1]),
        )


QUANTILES = (0.01, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999)


def probe_gradients(config: TrainConfig, probe: ProbeSection) -> ProbeResult:
    """Run ``probe.steps`` unclipped fp32 steps in-process and measure gradient statistics.

    ``max_norm`` range: [q_low, q_high] of the global norm. ``clip_value`` range: [q_low, q_high]
    of ``|g|`` over sampled elements — a value threshold clamps elements, so it lives on the
    elements' own scale. A degenerate range (q_low == q_high) is widened to [q/2, 2q].
    """
    from train_loops.worker import train_in_process

    probe_config = config.replace(
        clipping={"method": "none"},
        precision="fp32",
        activation_checkpointing=0,
        num_workers=1,
        max_steps=probe.steps,
        epochs=max(config.epochs, 10_000),
        report_every_steps=probe.steps,
        checkpoint_every_steps=10**9,
    )
    recorder = RecordingNoClip(seed=config.seed)
    train_in_process(probe_config, lambda metrics, directory: None, clip_policy=recorder)
    norms = np.array([n for n in recorder.norms if np.isfinite(n)])
    values = np.concatenate(recorder.abs_values)
    values = values[np.isfinite(values) & (values > 0)]
    if len(norms) == 0 or len(values) == 0:
        raise RuntimeError("the gradient probe saw no finite gradients; lower the learning rate")

    def quantiles(array: np.ndarray) -> dict[str, float]:
        return {f"p{q * 100:g}": float(np.quantile(array, q)) for q in QUANTILES}

    def bounds(array: np.ndarray) -> tuple[float, float]:
        low = float(np.quantile(array, probe.low_quantile))
        high = float(np.quantile(array, probe.high_quantile))
        if not high > low * 1.01:
            low, high = low / 2, high * 2
        return low, high

    result = ProbeResult(
        steps=len(recorder.norms),
        norm_quantiles=quantiles(norms),
        abs_grad_quantiles=quantiles(values),
        max_norm_range=bounds(norms),
        clip_value_range=bounds(values),
    )
    logger.info(
        "probe: max_norm in %s, clip_value in %s", result.max_norm_range, result.clip_value_range
    )
    return result


def load_or_probe(path: Path, config: TrainConfig, probe: ProbeSection) -> ProbeResult:
    """Reuse a study's saved probe (a resumed study must search the same space)."""
    if path.exists():
        return ProbeResult.from_json(path.read_text())
    result = probe_gradients(config, probe)
    path.write_text(result.to_json())
    return result
