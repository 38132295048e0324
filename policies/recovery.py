"""Spike recovery: what the training loop does when the stability detector flags a step.

The loop asks the :class:`~policies.StabilityDetector` for a verdict on each step's loss and
gradient norm *before* the optimizer update (agreed across ranks under DDP), and the policy
decides what a spike costs:

- :class:`NoRecovery` (``none``): apply the update anyway; the detector only scores the spike.
- :class:`SkipSpikes` (``skip``): leave the update out and go on with the next batch (metaseq's
  "skip a batch whose loss jumps"). ``max_in_a_row`` consecutive skips mean the spike is not a
  bad batch but the run itself: give up (diverged).
- :class:`RewindOnSpike` (``rewind``): keep a host-memory snapshot of the whole training state
  every ``every`` steps; on a spike restore it, leave out the batches between the snapshot and
  the spike (PaLM's manual recipe, automated), optionally run at ``lr_factor`` x the learning
  rate for ``lr_steps`` steps, and give up (diverged) at the ``max_rewinds + 1``-th spike.

Each policy is a frozen dataclass; it is also the typed config of ``training.recovery``
(``policy`` tells them apart)::

    training:
      recovery: {policy: rewind, every: 50, max_rewinds: 3, lr_factor: 0.5, lr_steps: 50}

>>> build_recovery_policy({"policy": "rewind", "every": 20})
RewindOnSpike(policy='rewind', every=20, max_rewinds=3, lr_factor=1.0, lr_steps=0, max_in_a_row=10)
>>> RewindOnSpike().on_spike(rewinds_so_far=3, updates_to_undo=12)
'give_up'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, Protocol

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from policies import _validation

RecoveryAction = Literal["apply", "skip", "rewind", "give_up"]
"""``apply`` the update anyway, ``skip`` this batch, ``rewind`` to the last snapshot, or
``give_up``: the run is declared diverged."""

RECOVERY_POLICIES = ("none", "skip", "rewind")
"""Every recovery policy, by name (``policy`` in the spec, ``recovery`` in a study's space)."""


class RecoveryPolicy(Protocol):
    """What the loop needs from a recovery policy."""

    policy: str
    """The policy's name: ``none``, ``skip`` or ``rewind``."""

    @property
    def judges_steps(self) -> bool:
        """Whether the loop must judge each step before its update (costs one host sync)."""
        ...

    @property
    def snapshot_every(self) -> int:
        """Steps between host-memory snapshots of the training state (0: none kept)."""
        ...

    def on_spike(
        self, *, rewinds_so_far: int = 0, skips_in_a_row: int = 0, updates_to_undo: int = 0
    ) -> RecoveryAction:
        """The action for a step the detector judged a spike (on every rank alike):
        ``rewinds_so_far`` in this run, ``skips_in_a_row`` batches skipped just before this
        one, ``updates_to_undo`` applied since the last snapshot (0: none, or no snapshot)."""
        ...


@dataclass(frozen=True)
class NoRecovery:
    """Spikes are scored, never acted on: every update is applied."""

    policy: Literal["none"] = "none"

    @property
    def judges_steps(self) -> bool:
        return False

    @property
    def snapshot_every(self) -> int:
        return 0

    def on_spike(
        self, *, rewinds_so_far: int = 0, skips_in_a_row: int = 0, updates_to_undo: int = 0
    ) -> RecoveryAction:
        return "apply"


@dataclass(frozen=True)
class SkipSpikes:
    """A step whose loss or gradient norm is a spike does not update the weights.

    The skipped batch does not count as a step (the schedule does not advance), so the run
    still takes its planned number of updates."""

    policy: Literal["skip"] = "skip"
    max_in_a_row: int = 10
    """Give up (diverged) when this many consecutive batches are spikes: the run itself has
    left its baseline, no batch is to blame; >= 1."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "max_in_a_row", _validation.integer("max_in_a_row", self.max_in_a_row, minimum=1)
        )

    @property
    def judges_steps(self) -> bool:
        return True

    @property
    def snapshot_every(self) -> int:
        return 0

    def on_spike(
        self, *, rewinds_so_far: int = 0, skips_in_a_row: int = 0, updates_to_undo: int = 0
    ) -> RecoveryAction:
        return "give_up" if skips_in_a_row + 1 >= self.max_in_a_row else "skip"


@dataclass(frozen=True)
class RewindOnSpike:
    """On a spike, restore the last snapshot and leave out the batches since it.

    A spike with nothing to undo (right after a rewind, while the rest of a bad block goes
    by) is skipped like :class:`SkipSpikes` does, and does not count as a rewind."""

    policy: Literal["rewind"] = "rewind"
    every: int = 50
    """Steps between host-memory snapshots (model, optimizer, LR schedule, loss scaler,
    clipping and detector state); >= 1. Also the most updates one rewind can undo."""
    max_rewinds: int = 3
    """Rewinds allowed in a run; the next spike declares it diverged; >= 0."""
    lr_factor: float = 1.0
    """Multiply the learning rate by this for ``lr_steps`` steps after a rewind, in (0, 1]."""
    lr_steps: int = 0
    """How long the lowered learning rate lasts (0: not lowered); >= 0."""
    max_in_a_row: int = 10
    """Give up (diverged) after this many consecutive spikes with nothing to undo; >= 1."""

    def __post_init__(self) -> None:
        checked = {
            "every": _validation.integer("every", self.every, minimum=1),
            "max_rewinds": _validation.integer("max_rewinds", self.max_rewinds, minimum=0),
            "lr_factor": _validation.in_range(
                "lr_factor", self.lr_factor, 0.0, 1.0, low_open=True, high_open=False
            ),
            "lr_steps": _validation.integer("lr_steps", self.lr_steps, minimum=0),
            "max_in_a_row": _validation.integer("max_in_a_row", self.max_in_a_row, minimum=1),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def judges_steps(self) -> bool:
        return True

    @property
    def snapshot_every(self) -> int:
        return self.every

    def on_spike(
        self, *, rewinds_so_far: int = 0, skips_in_a_row: int = 0, updates_to_undo: int = 0
    ) -> RecoveryAction:
        if updates_to_undo == 0:
            return "give_up" if skips_in_a_row + 1 >= self.max_in_a_row else "skip"
        return "give_up" if rewinds_so_far >= self.max_rewinds else "rewind"

    def lr_multiplier(self, steps_since_rewind: int) -> float:
        """The learning-rate factor ``steps_since_rewind`` steps after a rewind."""
        if self.lr_steps and 0 <= steps_since_rewind < self.lr_steps:
            return self.lr_factor
        return 1.0


# Unknown keys are refused when pydantic validates these dataclasses (the spec, TrainConfig).
for _policy in (NoRecovery, SkipSpikes, RewindOnSpike):
    _policy.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]

RecoveryConfig = Annotated[NoRecovery | SkipSpikes | RewindOnSpike, Field(discriminator="policy")]
"""Any recovery policy; ``policy`` picks the class (the type of ``training.recovery``)."""

RECOVERY_CLASSES: dict[str, type] = {
    "none": NoRecovery,
    "skip": SkipSpikes,
    "rewind": RewindOnSpike,
}

_ADAPTER: TypeAdapter[Any] = TypeAdapter(RecoveryConfig)


def build_recovery_policy(values: Mapping[str, Any] | RecoveryPolicy | str) -> RecoveryPolicy:
    """The policy from a mapping (``{"policy": "rewind", "every": 20}``), a name, or a policy;
    ``ValueError`` in one line naming the bad key or value."""
    if isinstance(values, NoRecovery | SkipSpikes | RewindOnSpike):
        return values
    if isinstance(values, str):
        values = {"policy": values}
    try:
        return _ADAPTER.validate_python(dict(values))
    except ValidationError as error:
        first = error.errors()[0]
        name = values.get("policy")
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            raise ValueError(
                f"recovery policy must be one of {list(RECOVERY_POLICIES)}, got {name!r}"
            ) from None
        if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            allowed = [f.name for f in fields(RECOVERY_CLASSES[name]) if f.name != "policy"]
            raise ValueError(
                f"unknown key {first['loc'][-1]!r} for recovery policy {name!r}; allowed: {allowed}"
            ) from None
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"recovery policy {name!r}: {message}") from None


def recovery_settings(policy: RecoveryPolicy) -> dict[str, Any]:
    """The policy as plain values (``{"policy": "rewind", "every": 50, ...}``)."""
    return {f.name: getattr(policy, f.name) for f in fields(policy)}  # type: ignore[arg-type]


def describe(policy: RecoveryPolicy) -> str:
    """``rewind(every=50)``, ``skip``, ``none``: short, for trial tables."""
    if isinstance(policy, RewindOnSpike):
        return f"rewind(every={policy.every})"
    return policy.policy
