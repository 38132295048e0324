"""The Tune function trainable: one trial = one training run, at one of two scales.

One worker: the loop runs in-process inside the trial (seconds of overhead). N workers: the
trial builds a ``TorchTrainer`` with a stable run name and fits it (Ray Train V2 pattern), then
reports the run's final metrics and checkpoint to Tune once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray.tune

from search.space import trial_config
from train_loops.config import TrainConfig

logger = logging.getLogger(__name__)

TRIAL_CPU = 0.01
"""CPU an N-worker trial's driver holds; its workers get the rest of their share."""


def run_trial(
    config: dict[str, Any],
    *,
    resume_from: Path | None = None,
    train_run_name: str | None = None,
) -> None:
    """Tune entry point. ``config`` = ``{"train": TrainConfig dict, "train_storage": path,
    "step_costs": {...}}`` plus the flat parameters the searcher suggested. A resumed study
    passes the checkpoint (1 worker) or the Ray Train run (N workers) a trial continues from
    (see :mod:`search.resume`)."""
    train_config = trial_config(config)
    if train_config.num_workers == 1:
        _run_in_process(train_config, resume_from)
    else:
        _run_with_ray_train(train_config, Path(config["train_storage"]), train_run_name)


def _run_in_process(config: TrainConfig, resume_from: Path | None) -> None:
    from train_loops.worker import train_in_process

    reported = []

    def report(metrics: dict[str, float], directory: Path | None) -> None:
        checkpoint = ray.tune.Checkpoint.from_directory(directory) if directory else None
        ray.tune.report(metrics, checkpoint=checkpoint)
        reported.append(True)

    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = Path(checkpoint.to_directory())
    if resume_from is not None:
        logger.info("trial resumes from %s", resume_from)
    final = train_in_process(config, report, resume_from=resume_from)
    if not reported:  # resumed from its final checkpoint: report that run's end once more
        checkpoint = ray.tune.Checkpoint.from_directory(resume_from) if resume_from else None
        ray.tune.report(final, checkpoint=checkpoint)


def _run_with_ray_train(config: TrainConfig, storage: Path, name: str | None) -> None:
    from train_loops.trainer import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    trainer = build_trainer(
        config,
        storage_path=storage,
        name=name or f"train-{trial_id}",
        worker_cpus=None if config.use_gpu else config.cpus_per_worker - TRIAL_CPU,
    )
    result = trainer.fit()
    ray.tune.report(dict(result.metrics), checkpoint=result.checkpoint)


def trial_resources(config: TrainConfig) -> dict[str, float] | list[dict[str, float]]:
    """What one trial reserves: the whole worker in-process, a sliver when Ray Train runs it."""
    if config.num_workers == 1:
        return {"GPU": 1, "CPU": 1} if config.use_gpu else {"CPU": config.cpus_per_worker}
    return [{"CPU": TRIAL_CPU}]
