"""Each data-parallel rank keeps its own random stream: in-process, with the rank's view of the
world given by a hand-written WorkerContext (a second rank whose RNG state the fake all-gather
returns as a marker). The DDP run itself is covered in test_train_ray.py."""

from __future__ import annotations

import torch

from train_loops.batches import ArrowShardBatches
from train_loops.checkpoint import load_checkpoint, save_checkpoint
from train_loops.config import TrainConfig
from train_loops.loop import WorkerContext, rank_seed, train
from train_loops.models import ModelSpec


def run_as_rank(config: TrainConfig, rank: int, keep, resume=None):
    """Train as ``rank`` of two; the other rank's RNG state is the string ``"rank-<r>"``.
    Each checkpoint is written to ``keep/step-N`` when reported; returns their states."""
    context = WorkerContext(
        rank=rank,
        world_size=2,
        all_gather=lambda value: [value if r == rank else f"rank-{r}" for r in range(2)],
    )
    batches = ArrowShardBatches(
        str(config.dataset_dir) + "/train.parquet",
        *_columns(config),
        rank=rank,
        world_size=2,
        batch_size=config.per_worker_batch_size,
        seed=config.seed,
        device=torch.device("cpu"),
    )
    saved = []

    def report(metrics, state):
        if state is not None:
            saved.append(save_checkpoint(keep / f"step-{state['step']}", state, config))

    train(
        config,
        batches=batches,
        batches_per_epoch=batches.batches_per_epoch,
        report=report,
        resume=resume,
        context=context,
    )
    return [load_checkpoint(path) for path in saved]


def _columns(config: TrainConfig):
    from train_loops.data import PreparedDataset

    dataset = PreparedDataset.open(config.dataset_dir)
    return dataset.feature_names, dataset.label_column


def test_each_rank_saves_and_resumes_its_own_rng_state(digits, tmp_path):
    assert rank_seed(0, 0) != rank_seed(0, 1) != rank_seed(1, 0)
    config = TrainConfig(
        dataset_dir=str(digits.root),
        epochs=2,
        global_batch_size=64,
        num_workers=2,
        report_every_steps=5,
        checkpoint_every_steps=5,
        model=ModelSpec("mlp", {"dropout": 0.2}),
    )
    uninterrupted = run_as_rank(config, rank=1, keep=tmp_path / "a")
    middle = uninterrupted[1]
    assert middle["rng"][0] == "rank-0"  # rank 0's state comes from rank 0, not from us
    assert isinstance(middle["rng"][1], dict)

    resumed = run_as_rank(config, rank=1, keep=tmp_path / "b", resume=middle)
    assert resumed[-1]["step"] == uninterrupted[-1]["step"]
    for name, tensor in uninterrupted[-1]["model"].items():
        torch.testing.assert_close(resumed[-1]["model"][name], tensor, rtol=0, atol=0)


def test_ranks_draw_different_dropout_masks(digits, tmp_path):
    config = TrainConfig(
        dataset_dir=str(digits.root),
        epochs=1,
        max_steps=1,
        num_workers=2,
        model=ModelSpec("mlp", {"dropout": 0.5}),
    )
    after = [
        run_as_rank(config, rank, keep=tmp_path / str(rank))[-1]["rng"][rank]["torch"]
        for rank in (0, 1)
    ]
    assert not torch.equal(after[0], after[1])
