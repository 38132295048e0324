"""Acting on spikes inside the loop: the verdict before the update, snapshots, skips, rewinds.

:class:`TrainingParts` is the training state that a checkpoint, a snapshot and a rewind all
handle alike (model, optimizer, LR schedule, loss scaler, clipping and detector state).
:class:`SpikeRecovery` applies a :mod:`policies.recovery` policy to it:

1. :meth:`SpikeRecovery.allows_update` runs inside the step, after clipping and before the
   optimizer update. It all-reduces the loss (the detector is fed the mean over ranks), asks the
   detector for the spike severity, and all-reduces that too, so every rank takes the same
   decision and DDP replicas stay identical.
2. :meth:`SpikeRecovery.recover` runs when the update was refused: skip the batch, rewind to
   the last host-memory snapshot (the batches since it are left out: the data position moves
   on), or give up and declare the run diverged.
3. :meth:`SpikeRecovery.after_update` keeps the snapshot every ``every`` steps and the lowered
   learning rate after a rewind.

Its own state (counters and the snapshot itself) goes into every checkpoint, so a resumed
run continues exactly, rewinds included.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from policies import RecoveryPolicy, RewindOnSpike, StabilityDetector

logger = logging.getLogger(__name__)

_RECOVERED_KEYS = ("recovered_spikes", "recovered_spike_severity")
"""Detector counters a rewind keeps (the rest of the detector goes back to the snapshot)."""


def host_copy(value: Any) -> Any:
    """A deep copy with every tensor detached and cloned into host memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(item) for item in value)
    return copy.deepcopy(value)


@dataclass
class TrainingParts:
    """The stateful objects of one run, saved and restored together."""

    model: nn.Module
    """The bare model (not the DDP wrapper: its state dict has no ``module.`` prefix)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Any
    clip: Any
    detector: StabilityDetector

    def state_dict(self) -> dict[str, Any]:
        """Live references (copy with :func:`host_copy` to keep them)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "precision": self.precision.state_dict(),
            "clipping": self.clip.state_dict(),
            "stability": self.detector.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. ``optimizer.load_state_dict`` keeps CPU tensors it is
        given, so pass a copy of anything that must stay untouched."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["precision"])
        self.clip.load_state_dict(state["clipping"])
        self.detector.load_state_dict(state["stability"])


class SpikeRecovery:
    """Applies ``policy`` to ``parts``; see the module docstring."""

    def __init__(
        self,
        policy: RecoveryPolicy,
        parts: TrainingParts,
        *,
        world_size: int = 1,
        all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor,
    ) -> None:
        self.policy = policy
        self.parts = parts
        self.world_size = world_size
        self.all_reduce_mean = all_reduce_mean
        self.rewinds = 0
        """Rewinds so far."""
        self.skipped_batches = 0
        """Batches that never updated the weights: skipped spikes, and for each rewind the
        batches from the snapshot to the spike."""
        self.steps_lost = 0
        """Applied updates that rewinds undid (the step counter went back by this much)."""
        self.skips_in_a_row = 0
        self.rewound_to: int | None = None
        self.snapshot: dict[str, Any] | None = None
        self.snapshot_step = -1
        self.reduced_loss: torch.Tensor | None = None
        """The loss all-reduced over ranks by the last :meth:`allows_update`."""
        self.severity = 0.0

    @property
    def judges_steps(self) -> bool:
        return self.policy.judges_steps

    # -- inside the step -----------------------------------------------------------------------

    def allows_update(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """The agreed verdict on a step before its update: ``False`` for a spike."""
        self.reduced_loss = self.all_reduce_mean(loss.detach().float())
        norm = float(grad_norm)
        scaler_handles_it = self.parts.precision.scales_loss and not math.isfinite(norm)
        severity = self.parts.detector.spike_severity(
            float(self.reduced_loss), None if scaler_handles_it else norm
        )
        if self.world_size > 1:  # any rank's spike is every rank's spike
            flag = torch.tensor([severity], dtype=torch.float32, device=loss.device)
            severity = float(self.all_reduce_mean(flag))
        self.severity = severity
        return severity == 0.0

    # -- after the step ------------------------------------------------------------------------

    def recover(self, step: int) -> int:
        """Act on a refused update at ``step`` (updates applied so far); the step count to
        continue from. Gives up (the detector declares divergence) when the policy says so."""
        detector = self.parts.detector
        action = self.policy.on_spike(
            rewinds_so_far=self.rewinds,
            skips_in_a_row=self.skips_in_a_row,
            updates_to_undo=step - self.snapshot_step if self.snapshot is not None else 0,
        )
        if action == "give_up":
            detector.record_recovered_spike(self.severity)
            detector.declare_divergence(
                f"{self.policy.policy} recovery gave up at step {step} "
                f"({self.rewinds} rewinds, {self.skips_in_a_row + 1} spikes in a row)"
            )
            return step
        if action != "rewind":  # skip ("apply" never reaches here: such a policy has no gate)
            self.skips_in_a_row += 1
            self.skipped_batches += 1
            detector.record_recovered_spike(self.severity)
            return step
        lost = step - self.snapshot_step
        carried = {key: detector.state_dict()[key] for key in _RECOVERED_KEYS}
        state = host_copy(self.snapshot)  # the loaded optimizer state must not alias it
        state["stability"].update(carried)
        self.parts.load_state_dict(state)
        detector.record_recovered_spike(self.severity)
        self.rewinds += 1
        self.steps_lost += lost
        self.skipped_batches += lost + 1
        self.rewound_to = self.snapshot_step
        self._lower_learning_rate(self.snapshot_step)
        logger.warning(
            "spike at step %d (severity %.2f): rewound to step %d, %d updates undone (rewind %d)",
            step,
            self.severity,
            self.snapshot_step,
            lost,
            self.rewinds,
        )
        return self.snapshot_step

    def after_update(self, step: int) -> None:
        """After an applied update and ``scheduler.step()``: ``step`` updates applied."""
        self.skips_in_a_row = 0
        self._lower_learning_rate(step)
        self.take_snapshot_if_due(step)

    def take_snapshot_if_due(self, step: int) -> None:
        """Copy the training state to host memory every ``snapshot_every`` steps (and at 0)."""
        every = self.policy.snapshot_every
        if every and step % every == 0 and step != self.snapshot_step:
            self.snapshot = host_copy(self.parts.state_dict())
            self.snapshot_step = step

    def _lower_learning_rate(self, step: int) -> None:
        policy = self.policy
        if not isinstance(policy, RewindOnSpike) or self.rewound_to is None:
            return
        factor = policy.lr_multiplier(step - self.rewound_to)
        groups = self.parts.optimizer.param_groups
        for group, lr in zip(groups, self.parts.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr * factor

    # -- telemetry and checkpoints -------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        return {
            "rewinds": float(self.rewinds),
            "skipped_batches": float(self.skipped_batches),
            "steps_lost": float(self.steps_lost),
        }

    def state_dict(self) -> dict[str, Any]:
        """Counters and the snapshot (host tensors): a checkpoint holds the recovery state."""
        return {
            "policy": self.policy.policy,
            "rewinds": self.rewinds,
            "skipped_batches": self.skipped_batches,
            "steps_lost": self.steps_lost,
            "skips_in_a_row": self.skips_in_a_row,
            "rewound_to": self.rewound_to,
            "snapshot": self.snapshot,
            "snapshot_step": self.snapshot_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["policy"] != self.policy.policy:
            logger.warning(
                "checkpoint was taken under recovery %r, continuing under %r: snapshot dropped",
                state["policy"],
                self.policy.policy,
            )
            state = {**state, "snapshot": None, "snapshot_step": -1}
        self.rewinds = int(state["rewinds"])
        self.skipped_batches = int(state["skipped_batches"])
        self.steps_lost = int(state["steps_lost"])
        self.skips_in_a_row = int(state["skips_in_a_row"])
        self.rewound_to = None if state["rewound_to"] is None else int(state["rewound_to"])
        self.snapshot = state["snapshot"]
        self.snapshot_step = int(state["snapshot_step"])
