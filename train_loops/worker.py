"""Running the loop: in-process, or as the per-worker function of Ray Train's ``TorchTrainer``.

:func:`train_worker` is the only place in ``train_loops`` that touches ``ray.train``; it turns
the dict Ray hands it into a :class:`TrainConfig` in its first line.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from train_loops.batches import ArrowShardBatches, BatchSource, RayDataBatches
from train_loops.checkpoint import load_checkpoint, save_checkpoint
from train_loops.config import TrainConfig
from train_loops.data import PreparedDataset
from train_loops.loop import Reporter, WorkerContext, train

logger = logging.getLogger(__name__)


def arrow_batches(config: TrainConfig, context: WorkerContext) -> ArrowShardBatches:
    dataset = PreparedDataset.open(config.dataset_dir)
    return ArrowShardBatches(
        str(dataset.split_path("train")),
        dataset.feature_names,
        dataset.label_column,
        rank=context.rank,
        world_size=context.world_size,
        batch_size=config.per_worker_batch_size,
        seed=config.seed,
        device=context.device,
    )


def train_in_process(
    config: TrainConfig,
    report: Callable[[dict[str, float], Path | None], None],
    resume_from: Path | None = None,
    clip_policy: Any = None,
) -> dict[str, float]:
    """One worker, no Ray Train: each checkpoint is written to a temporary directory and
    handed to ``report(metrics, directory)`` while it exists (copy it to keep it)."""
    if config.num_workers != 1:
        raise ValueError(
            f"in-process training runs one worker, got num_workers={config.num_workers}"
        )
    context = WorkerContext(device=_device(config.use_gpu))
    batches = arrow_batches(config, context)
    resume = load_checkpoint(resume_from) if resume_from is not None else None
    return train(
        config,
        batches=batches,
        batches_per_epoch=batches.batches_per_epoch,
        report=_directory_reporter(config, report),
        resume=resume,
        context=context,
        clip_policy=clip_policy,
    )


def _directory_reporter(
    config: TrainConfig, report: Callable[[dict[str, float], Path | None], None]
) -> Reporter:
    def hand_on(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is None:
            report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="trimtab-ckpt-") as directory:
            save_checkpoint(directory, state, config)
            report(metrics, Path(directory))

    return hand_on


def train_worker(
    config_dict: dict[str, Any],
    *,
    wrap_batches: Callable[[BatchSource, WorkerContext], BatchSource] | None = None,
    on_checkpoint: Callable[[WorkerContext, dict[str, Any]], None] | None = None,
) -> None:
    """Per-worker function for ``TorchTrainer(train_loop_per_worker=train_worker, ...)``.

    Fault drills (``functools.partial(train_worker, ...)``): ``wrap_batches`` replaces this
    worker's batch source (say, to corrupt a block of it), ``on_checkpoint`` sees every rank's
    full state whenever a checkpoint is due (only rank 0's is saved)."""
    config = TrainConfig.from_dict(config_dict)
    import ray.train
    import ray.train.torch

    context_ray = ray.train.get_context()
    rank, world_size = context_ray.get_world_rank(), context_ray.get_world_size()
    device = ray.train.torch.get_device() if config.use_gpu else torch.device("cpu")
    context = WorkerContext(
        rank=rank,
        world_size=world_size,
        device=device,
        prepare_model=ray.train.torch.prepare_model,
        all_reduce_mean=_all_reduce_mean if world_size > 1 else (lambda tensor: tensor),
        all_gather=_all_gather if world_size > 1 else (lambda value: [value]),
    )
    dataset = PreparedDataset.open(config.dataset_dir)
    if config.data_loader == "ray_data":
        batches = RayDataBatches(
            ray.train.get_dataset_shard("train"),
            dataset.feature_names,
            dataset.label_column,
            batch_size=config.per_worker_batch_size,
            seed=config.seed,
            device=device,
        )
        rows = pq.ParquetFile(dataset.split_path("train")).metadata.num_rows // world_size
        batches_per_epoch = rows // config.per_worker_batch_size
    else:
        batches = arrow_batches(config, context)
        batches_per_epoch = batches.batches_per_epoch
    if wrap_batches is not None:
        batches = wrap_batches(batches, context)

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)
        logger.info("rank %d resuming from %s (step %d)", rank, checkpoint.path, resume["step"])

    def report(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        # ray.train.report is a barrier: every rank calls it, only rank 0 attaches the files.
        if state is not None and on_checkpoint is not None:
            on_checkpoint(context, state)
        if state is not None and rank == 0:
            with tempfile.TemporaryDirectory(prefix="trimtab-ckpt-") as directory:
                save_checkpoint(directory, state, config)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)

    train(
        config,
        batches=batches,
        batches_per_epoch=batches_per_epoch,
        report=report,
        resume=resume,
        context=context,
    )


def _all_gather(value: Any) -> list[Any]:
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def _all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    reduced = tensor.detach().clone()
    torch.distributed.all_reduce(reduced)
    return reduced / torch.distributed.get_world_size()


def _device(use_gpu: bool) -> torch.device:
    if use_gpu:
        if not torch.cuda.is_available():
            raise ValueError("use_gpu is set but CUDA is not available on this machine")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
