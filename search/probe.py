"""The gradient probe: short unclipped runs whose gradient statistics set the clip ranges.

Norm thresholds are searched on a log scale between two quantiles of the global gradient norms
the probe saw; value thresholds between the same quantiles of sampled elementwise ``|g|``
(see :func:`probe_gradients`). Gradients scale with the learning rate and the optimizer, so
the probe runs at the low, middle and high end of the study's learning-rate range with each
optimizer the study searches: the thresholds fit the trials that will use them. Its result is
cached in ``probe.json`` with a fingerprint of everything it depends on; a changed model,
data, batch, learning-rate range or probe setting runs it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policies import ClipReport, NoClipping
from search.spec import FloatRange, ProbeSection, StudySpec
from train_loops.config import TrainConfig

logger = logging.getLogger(__name__)

SAMPLED_ELEMENTS = 4096
"""Gradient elements sampled per step (uniformly, seeded) for the elementwise quantiles."""


class RecordingClip:
    """Wraps a clipping policy (no clipping, for the probe) and records the norms it reports
    and a seeded sample of the gradient elements it saw."""

    def __init__(self, policy: Any = None, seed: int = 0) -> None:
        self.policy = policy if policy is not None else NoClipping()
        self.norms: list[float] = []
        self.abs_values: list[np.ndarray] = []
        self._generator = torch.Generator().manual_seed(seed)

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        parameters = list(parameters)
        flat = torch.cat(
            [p.grad.detach().float().flatten() for p in parameters if p.grad is not None]
        )
        index = torch.randint(
            len(flat), (min(SAMPLED_ELEMENTS, len(flat)),), generator=self._generator
        )
        self.abs_values.append(flat[index.to(flat.device)].abs().cpu().numpy())
        report = self.policy(parameters)
        self.norms.append(float(report.grad_norm))
        return report

    def state_dict(self) -> dict[str, Any]:
        return self.policy.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state)


@dataclass(frozen=True)
class ProbeResult:
    steps: int
    norm_quantiles: dict[str, float]
    abs_grad_quantiles: dict[str, float]
    max_norm_range: tuple[float, float]
    clip_value_range: tuple[float, float]
    runs: list[dict[str, Any]] = field(default_factory=list)
    """One entry per probe run: its learning rate, optimizer, steps and whether it diverged."""
    fingerprint: str = ""
    """Hash of what the probe depends on (see :func:`probe_fingerprint`)."""

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


def probe_settings(spec: StudySpec, base: TrainConfig) -> list[tuple[float, str]]:
    """(learning rate, optimizer) of each probe run: the low, geometric-middle and high end of
    the searched learning-rate range (the base rate when it is not searched), per optimizer."""
    space = spec.search.space
    if space.learning_rate is None:
        rates = [base.learning_rate]
    else:
        low, high = space.learning_rate.low, space.learning_rate.high
        middle = math.sqrt(low * high) if space.learning_rate.log else (low + high) / 2
        rates = [low, middle, high]
    return [(rate, optimizer) for optimizer in space.optimizer for rate in rates]


def probe_fingerprint(spec: StudySpec, base: TrainConfig) -> str:
    """Hash of everything the probe's result depends on."""
    what = {
        "train": {
            key: value
            for key, value in base.to_dict().items()
            if key not in ("report_every_steps", "checkpoint_every_steps", "max_failures")
        },
        "probe": spec.search.probe.model_dump(),
        "settings": probe_settings(spec, base),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def probe_gradients(
    config: TrainConfig, probe: ProbeSection, settings: list[tuple[float, str]] | None = None
) -> ProbeResult:
    """Run ``probe.steps`` unclipped fp32 steps in-process per (learning rate, optimizer) of
    ``settings`` (default: the config's own) and measure gradient statistics.

    ``max_norm`` range: [q_low, q_high] of the global norm. ``clip_value`` range: [q_low, q_high]
    of ``|g|`` over sampled elements — a value threshold clamps elements, so it lives on the
    elements' own scale. Runs that diverged only count when every run did (their last norms
    would stretch the range to thresholds no trial needs). A degenerate range (q_low == q_high)
    is widened to [q/2, 2q].
    """
    from train_loops.worker import train_in_process

    settings = settings or [(config.learning_rate, config.optimizer)]
    kept, everything, runs = [], [], []
    for rate, optimizer in settings:
        probe_config = config.replace(
            clipping={"method": "none"},
            precision="fp32",
            activation_checkpointing=0,
            num_workers=1,
            learning_rate=rate,
            optimizer=optimizer,
            max_steps=probe.steps,
            epochs=max(config.epochs, 10_000),
            report_every_steps=probe.steps,
            checkpoint_every_steps=10**9,
            step_cost_seconds=None,
        )
        recorder = RecordingClip(seed=config.seed)
        final = train_in_process(
            probe_config, lambda metrics, directory: None, clip_policy=recorder
        )
        diverged = bool(final.get("diverged", 0.0))
        runs.append(
            {
                "learning_rate": rate,
                "optimizer": optimizer,
                "steps": len(recorder.norms),
                "diverged": diverged,
            }
        )
        everything.append(recorder)
        if not diverged:
            kept.append(recorder)
    recorders = kept or everything
    norms = np.array([n for r in recorders for n in r.norms if np.isfinite(n)])
    values = np.concatenate([a for r in recorders for a in r.abs_values])
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
        steps=sum(run["steps"] for run in runs),
        norm_quantiles=quantiles(norms),
        abs_grad_quantiles=quantiles(values),
        max_norm_range=bounds(norms),
        clip_value_range=bounds(values),
        runs=runs,
    )
    logger.info(
        "probe: max_norm in %s, clip_value in %s", result.max_norm_range, result.clip_value_range
    )
    return result


def load_or_probe(directory: Path, config: TrainConfig, spec: StudySpec) -> ProbeResult:
    """The study's saved probe while its fingerprint still matches (a resumed study searches
    the same space); otherwise probe again and save."""
    path = directory / "probe.json"
    expected = probe_fingerprint(spec, config)
    if path.exists():
        try:
            saved = ProbeResult.from_json(path.read_text())
        except (ValueError, TypeError) as error:
            logger.warning("%s is unreadable (%s); probing again", path, error)
        else:
            if saved.fingerprint == expected:
                return saved
            logger.info("what the probe depends on changed; probing again")
    result = probe_gradients(config, spec.search.probe, probe_settings(spec, config))
    result = dataclasses.replace(result, fingerprint=expected)
    path.write_text(result.to_json())
    return result
