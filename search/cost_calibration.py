"""The study's cost model: a per-step cost for each cost-relevant setting, measured once per
study and cached beside it, so that a trial's cost is ``steps x per-step cost x workers x
price`` — a function of its configuration, not of the machine's load while it ran.

Cost-relevant: the model, the per-worker batch, the optimizer, precision and activation
checkpointing (the search explores the last three), the number of workers and the device.
Communication between data-parallel workers is not in the calibrated step (it is measured on
one worker); the cost of N workers is N times one worker's step. Wall time stays in every
report as telemetry (``wall_seconds``, ``wall_cost_dollars``).

The cache, ``<study>/cost_calibration.json``, is keyed by a fingerprint of everything the
measurement depends on; a changed model, batch, device or space measures again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.spec import StudySpec
from train_loops.config import TrainConfig

logger = logging.getLogger(__name__)

FILE_NAME = "cost_calibration.json"
SLOW_REDUCED_PRECISION = 1.2
"""A reduced precision whose step costs more than this multiple of fp32's draws a warning."""


def cost_key(config: TrainConfig) -> str:
    """The calibration table's key for ``config``: the settings a study varies that change the
    cost of a step."""
    return (
        f"{config.precision}|ac={config.activation_checkpointing}|{config.optimizer}"
        f"|batch={config.global_batch_size}"
    )


def charged(config: TrainConfig, step_seconds: dict[str, float]) -> TrainConfig:
    """``config`` with its calibrated ``step_cost_seconds`` from ``step_seconds`` (a
    calibration's table); unchanged, with a warning, when its setting was not calibrated (its
    cost then follows wall-clock time)."""
    seconds = step_seconds.get(cost_key(config))
    if seconds is None:
        logger.warning(
            "no calibrated step cost for %s; its cost follows wall-clock time", cost_key(config)
        )
        return config
    return config.replace(step_cost_seconds=seconds)


@dataclass(frozen=True)
class CostCalibration:
    """Median seconds per optimizer step of one worker, for every setting the study can try."""

    fingerprint: str
    device: str
    clock: str
    step_seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def step_cost(self, config: TrainConfig) -> float | None:
        """Calibrated seconds per step of ``config`` (``None``: not a calibrated setting)."""
        return self.step_seconds.get(cost_key(config))

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` charged at its calibrated cost (see :func:`charged`)."""
        return charged(config, self.step_seconds)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CostCalibration:
        return cls(**json.loads(text))


def calibration_configs(spec: StudySpec, base: TrainConfig) -> list[TrainConfig]:
    """One config per cost-relevant combination the study's space can produce."""
    space = spec.search.space
    batches = space.extra.get("global_batch_size")
    batch_sizes = batches if isinstance(batches, list) else [base.global_batch_size]
    combos = itertools.product(
        space.precision, space.activation_checkpointing, space.optimizer, batch_sizes
    )
    return [
        base.replace(
            precision=precision,
            activation_checkpointing=checkpointing,
            optimizer=optimizer,
            global_batch_size=batch,
            clipping={"method": "none"},
        )
        for precision, checkpointing, optimizer, batch in combos
    ]


def fingerprint(spec: StudySpec, base: TrainConfig) -> str:
    """Hash of what the calibration depends on."""
    configs = calibration_configs(spec, base)
    what: dict[str, Any] = {
        "model": {"name": base.model.name, "options": base.model.options},
        "dataset": base.dataset_dir,
        "workers": base.num_workers,
        "threads": _threads(base),
        "gpu": base.use_gpu,
        "torch": torch.__version__,
        "keys": sorted(cost_key(config) for config in configs),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _threads(base: TrainConfig) -> int:
    return max(1, int(base.cpus_per_worker))


def _device(base: TrainConfig) -> torch.device:
    if base.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def calibrate(spec: StudySpec, base: TrainConfig) -> CostCalibration:
    """Measure every cost-relevant setting of the study (a few seconds on small models).

    Runs where it is called: a GPU study's calibration must run on a GPU machine (the study
    runs it in a Ray task that asks for one).
    """
    from train_loops.step_cost import measure_step_seconds

    configs = calibration_configs(spec, base)
    device = _device(base)
    measured = measure_step_seconds(configs, device=device, threads=_threads(base))
    table = {cost_key(c): s for c, s in zip(configs, measured.seconds, strict=True)}
    warnings = slow_precision_warnings(table, measured.device)
    for warning in warnings:
        logger.warning(warning)
    return CostCalibration(
        fingerprint=fingerprint(spec, base),
        device=measured.device,
        clock=measured.clock,
        step_seconds=table,
        warnings=warnings,
    )


def slow_precision_warnings(table: dict[str, float], device: str) -> list[str]:
    """One line per reduced precision the device does not accelerate (slower than fp32)."""
    ratios: dict[str, list[float]] = {}
    for key, seconds in table.items():
        precision, rest = key.split("|", 1)
        reference = table.get(f"fp32|{rest}")
        if precision != "fp32" and reference:
            ratios.setdefault(precision, []).append(seconds / reference)
    warnings = []
    for precision, values in sorted(ratios.items()):
        ratio = sorted(values)[len(values) // 2]
        if ratio > SLOW_REDUCED_PRECISION:
            warnings.append(
                f"{precision} is {ratio:.1f}x slower per step than fp32 on {device}: this "
                f"device does not accelerate it (emulated), so the search will find it costly"
            )
    return warnings


def load_or_calibrate(directory: Path, spec: StudySpec, base: TrainConfig) -> CostCalibration:
    """The study's cached calibration when it still fits the spec, else a fresh one (saved)."""
    path = directory / FILE_NAME
    expected = fingerprint(spec, base)
    if path.exists():
        try:
            cached = CostCalibration.from_json(path.read_text())
        except (ValueError, TypeError) as error:
            logger.warning("%s is unreadable (%s); measuring again", path, error)
        else:
            if cached.fingerprint == expected:
                for warning in cached.warnings:
                    logger.warning(warning)
                return cached
            logger.info("the study's cost-relevant settings changed; measuring step costs again")
    if base.use_gpu and not torch.cuda.is_available():
        calibration = _calibrate_on_a_gpu_worker(spec, base)
    else:
        calibration = calibrate(spec, base)
    path.write_text(calibration.to_json())
    logger.info(
        "step costs on %s (%s): %s",
        calibration.device,
        calibration.clock,
        ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(calibration.step_seconds.items())),
    )
    return calibration


def _calibrate_on_a_gpu_worker(spec: StudySpec, base: TrainConfig) -> CostCalibration:
    """The driver has no GPU (a cluster's head): measure in a Ray task that has one."""
    import ray

    from train_loops.ray_runtime import ensure_ray

    ensure_ray()
    task = ray.remote(num_gpus=1)(calibrate)
    return ray.get(task.remote(spec, base))
