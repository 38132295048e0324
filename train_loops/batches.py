"""Per-worker batches of one epoch, from Parquet (pyarrow) or from a Ray Data shard.

Both sources give every worker the same number of batches per epoch (``ray.train.report`` is
a barrier) and can skip the batches an interrupted epoch already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq
import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchSource(Protocol):
    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` for this worker, the first ``skip`` left out."""
        ...


class ArrowShardBatches:
    """The split read once with pyarrow; each epoch a seeded permutation, strided by rank.

    Like ``DistributedSampler(drop_last=True)``: rows ``perm[rank::world]``, batches of
    ``batch_size``, the ragged tail dropped so every rank has the same count. The order depends
    only on ``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(
        self,
        path: str,
        feature_names: Sequence[str],
        label_column: str,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        table = pq.read_table(path, columns=[*feature_names, label_column])
        self.features = torch.from_numpy(
            np.stack([table.column(n).to_numpy() for n in feature_names], axis=1).astype(np.float32)
        )
        self.labels = torch.from_numpy(table.column(label_column).to_numpy().astype(np.int64))
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.seed, self.device = seed, device
        rows_per_rank = len(self.labels) // world_size
        self.batches_per_epoch = rows_per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{path}: {len(self.labels)} rows give no full batch of {batch_size} per worker"
            )

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))
        mine = torch.from_numpy(order[self.rank :: self.world_size])
        for index in range(skip, self.batches_per_epoch):
            rows = mine[index * self.batch_size : (index + 1) * self.batch_size]
            yield (
                self.features[rows].to(self.device, non_blocking=True),
                self.labels[rows].to(self.device, non_blocking=True),
            )


class RayDataBatches:
    """Batches from ``ray.train.get_dataset_shard(...)`` (a ``DataIterator``)."""

    def __init__(
        self,
        shard: Any,
        feature_names: Sequence[str],
        label_column: str,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.shard, self.feature_names, self.label_column = shard, list(feature_names), label_column
        self.batch_size, self.seed, self.device = batch_size, seed, device

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        batches = self.shard.iter_torch_batches(
            batch_size=self.batch_size,
            drop_last=True,
            local_shuffle_buffer_size=4 * self.batch_size,
            local_shuffle_seed=self.seed * 100_003 + epoch,
            device=self.device,
        )
        for index, batch in enumerate(batches):
            if index < skip:
                continue
            features = torch.stack([batch[n] for n in self.feature_names], dim=1).float()
            yield features, batch[self.label_column].long()


def evaluate(
    model: torch.nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    autocast: Any,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on a whole split (no grad, eval mode)."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = features[start : start + batch_size]
            y = labels[start : start + batch_size]
            with autocast():
                logits = model(x)
            total_loss += torch.nn.functional.cross_entropy(
                logits.float(), y, reduction="sum"
            ).item()
            correct += int((logits.argmax(dim=1) == y).sum())
    model.train(was_training)
    return total_loss / len(labels), correct / len(labels)
