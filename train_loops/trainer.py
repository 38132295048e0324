"""Build Ray Train's ``TorchTrainer`` for a :class:`TrainConfig` (N data-parallel workers)."""

from __future__ import annotations

from pathlib import Path

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from train_loops.config import TrainConfig
from train_loops.data import PreparedDataset
from train_loops.worker import train_worker


def build_trainer(
    config: TrainConfig, *, storage_path: Path | str, name: str, worker_cpus: float | None = None
) -> TorchTrainer:
    """A ``TorchTrainer`` that runs :func:`train_worker` on ``config.num_workers`` workers.

    ``name`` must be stable (no timestamps): fitting again with the same ``(storage_path, name)``
    resumes from the run's latest checkpoint. ``worker_cpus`` overrides ``config.cpus_per_worker``
    (a Tune trial that holds a sliver of CPU lends its workers the rest).
    """
    cpus = config.cpus_per_worker if worker_cpus is None else worker_cpus
    scaling = ray.train.ScalingConfig(
        num_workers=config.num_workers,
        use_gpu=config.use_gpu,
        resources_per_worker=None if config.use_gpu else {"CPU": cpus},
    )
    run_config = ray.train.RunConfig(
        name=name,
        storage_path=str(storage_path),
        failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3),
    )
    datasets = None
    if config.data_loader == "ray_data":
        dataset = PreparedDataset.open(config.dataset_dir)
        datasets = {"train": ray.data.read_parquet(str(dataset.split_path("train")))}
    return TorchTrainer(
        train_worker,
        train_loop_config=config.to_dict(),
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
    )
