"""Documented data faults for the recovery and robust-standardisation tests.

Two generators, both deterministic:

- :class:`CorruptBlock` wraps a batch source so that a *block of consecutive training rows*
  arrives corrupt: ``batches`` consecutive batches of epoch ``epoch`` (from batch
  ``first_batch`` on; ``batches x batch_size`` rows, a few hundred) have their features
  multiplied by ``scale`` (``fault="scale"``, a unit or byte-order bug in one shard) or their
  labels replaced by seeded random classes (``fault="labels"``, a mislabelled shard). The fault
  is transient, as a bad shard in a stream is: the other epochs see the rows clean. It depends
  only on ``(epoch, batch index)``, so a resumed run meets the very same corrupt batches.
  ``ranks`` limits it to some Ray Train workers (the others see clean batches), which is how
  the DDP test checks that all ranks still take one decision. Ray workers import it as
  ``tests.corrupt_data`` (they start in the repository root).
- :func:`write_scaled_block_source` writes the digits set to Parquet with ``rows`` consecutive
  rows' features multiplied by ``scale`` (the fault of issue 18: 200 rows x 1e3), for
  ``prepare_dataset`` to split like any user file; the corrupt rows are the ones with a
  feature above :data:`DIGITS_MAX_PIXEL`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class CorruptBlock:
    """``CorruptBlock(...)(batches, context)`` → the batch source with the block corrupt."""

    epoch: int = 2
    first_batch: int = 4
    batches: int = 5
    fault: Literal["scale", "labels"] = "scale"
    scale: float = 1e3
    num_classes: int = 10
    ranks: tuple[int, ...] | None = None
    seed: int = 0

    def __call__(self, batches: Any, context: Any = None) -> _CorruptedSource:
        rank = 0 if context is None else context.rank
        return _CorruptedSource(self, batches, self.ranks is None or rank in self.ranks)

    def corrupts(self, epoch: int, index: int) -> bool:
        return epoch == self.epoch and self.first_batch <= index < self.first_batch + self.batches

    def corrupt(self, features: torch.Tensor, labels: torch.Tensor, index: int) -> Batch:
        if self.fault == "scale":
            return features * self.scale, labels
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        scrambled = torch.randint(self.num_classes, labels.shape, generator=generator)
        return features, scrambled.to(labels.device)


@dataclass
class _CorruptedSource:
    block: CorruptBlock
    inner: Any
    active: bool

    @property
    def batches_per_epoch(self) -> int:
        return self.inner.batches_per_epoch

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        for index, (features, labels) in enumerate(self.inner.epoch(epoch, skip), start=skip):
            if self.active and self.block.corrupts(epoch, index):
                features, labels = self.block.corrupt(features, labels, index)
            yield features, labels


DIGITS_MAX_PIXEL = 16.0
"""Digits pixels are 0..16: after :func:`write_scaled_block_source`, exactly the corrupt rows
have a feature above this."""


def write_scaled_block_source(
    path: Path, *, start: int = 400, rows: int = 200, scale: float = 1e3
) -> Path:
    """The digits set as one Parquet file (``pixel_0..63``, ``label``) with the features of
    rows ``start .. start + rows - 1`` multiplied by ``scale``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = digits.data.astype(np.float32)
    features[start : start + rows] *= scale
    columns: dict[str, Any] = {f"pixel_{i}": features[:, i] for i in range(features.shape[1])}
    columns["label"] = digits.target.astype(np.int64)
    pq.write_table(pa.table(columns), path)
    return path


@dataclass(frozen=True)
class RankStates:
    """``on_checkpoint`` for :func:`train_loops.worker.train_worker`: every rank writes its
    model weights and counters at each checkpoint to ``directory/rank<r>-step<s>.pt``."""

    directory: str

    def __call__(self, context: Any, state: dict[str, Any]) -> None:
        kept = {"model": state["model"], "step": state["step"], "recovery": state["recovery"]}
        kept["recovery"] = {k: v for k, v in kept["recovery"].items() if k != "snapshot"}
        torch.save(kept, Path(self.directory) / f"rank{context.rank}-step{state['step']}.pt")
