"""Activation checkpointing of a model's blocks, and a counter of the bytes saved for backward
that measures its effect on any device."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from policies import _validation

logger = logging.getLogger(__name__)


class _CheckpointedForward:
    """Stands in for a block's ``forward``: recomputes the block during backward instead of
    keeping its activations, while the block trains with grad enabled; otherwise (eval,
    ``no_grad``, export) it is the original forward."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self.forward = block.forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.block.training and torch.is_grad_enabled():
            return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)
        return self.forward(*args, **kwargs)


@dataclass(frozen=True)
class ActivationCheckpointing:
    """Checkpoint every ``every``-th block of a model's sequence of blocks.

    ``every=0`` is off; ``every=k`` checkpoints blocks ``k-1, 2k-1, 3k-1, ...`` (0-based), so
    ``every=1`` checkpoints all of them and ``every=2`` every second one, ending on the last
    block when the count divides evenly. A checkpointed block keeps only its inputs during the
    forward pass and recomputes its activations in backward (``torch.utils.checkpoint``,
    non-reentrant), trading compute for memory.

    :meth:`apply` replaces the chosen blocks' ``forward`` on the instances, instead of wrapping
    them in another module, so parameter names and ``state_dict`` keys do not change; it works
    inside DistributedDataParallel, since non-reentrant checkpointing is transparent to
    autograd hooks.

    >>> ActivationCheckpointing(every=2).apply(model.blocks)  # doctest: +SKIP
    """

    every: int = 0
    """Checkpoint one block in ``every``; 0 turns checkpointing off."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", _validation.integer("every", self.every, minimum=0))

    def selected(self, count: int) -> list[int]:
        """Indices of the blocks checkpointed among ``count`` blocks."""
        if self.every == 0:
            return []
        return list(range(self.every - 1, count, self.every))

    def apply(self, blocks: Iterable[nn.Module]) -> list[int]:
        """Checkpoint the selected blocks in place; returns their indices.

        Applying twice does not checkpoint a block twice.
        """
        blocks = list(blocks)
        chosen = self.selected(len(blocks))
        for index in chosen:
            block = blocks[index]
            if not isinstance(block.__dict__.get("forward"), _CheckpointedForward):
                block.forward = _CheckpointedForward(block)
        if self.every and not chosen:
            logger.warning(
                "activation checkpointing every=%d selects none of %d blocks",
                self.every,
                len(blocks),
            )
        return chosen


class SavedTensorBytes:
    """Counts the bytes autograd saves for backward inside the ``with`` block.

    Every tensor an operation saves passes through ``torch.autograd.graph.saved_tensors_hooks``;
    each distinct storage is counted once at its full size (views of one storage count once).
    The count includes parameters that operations save (a Linear saves its weight), and the
    inputs a checkpointed block keeps for recomputation. What a checkpointed block saves during
    its forward is discarded and recomputed later, so it is not counted.

    >>> with SavedTensorBytes() as counter:  # doctest: +SKIP
    ...     loss = model(x).sum()
    >>> counter.bytes  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.bytes = 0
        """Bytes saved so far."""
        self._seen: set[tuple[str, int]] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hooks.__exit__(*exc_info)
