"""The typed configuration of one training run: one class, one set of defaults.

:class:`TrainingSettings` is how a run trains; it *is* the study spec's ``training:`` section.
:class:`TrainConfig` adds what the study supplies per run (the prepared data and the model).
Clipping is a typed config per rule (:mod:`policies.clipping.configs`), stability settings
are :class:`~policies.StabilityConfig`, recovery is a :mod:`policies.recovery` policy; unknown
keys are refused everywhere.

Ray hands the worker a plain dict; :meth:`TrainConfig.from_dict` is the one place that turns
it into these objects, and :meth:`TrainConfig.to_dict` goes back.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from policies import NoRecovery, RecoveryConfig, StabilityConfig
from policies.clipping import ClipConfig, NoClipConfig
from train_loops.models import ModelSpec

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")


class TrainingSettings(BaseModel):
    """How one run trains; the same object drives 1 or N workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(4, ge=1)
    """Passes over the training split."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (``None``, or more than the epochs hold: run all
    epochs). The run ends with its final report and checkpoint either way."""
    global_batch_size: int = Field(64, ge=1)
    """Rows per optimizer step over all workers; each worker takes ``global / num_workers``."""
    learning_rate: float = Field(3e-3, gt=0)
    """Peak learning rate, reached after ``warmup_steps``."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """``adamw`` or ``sgd`` (with ``momentum``)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (ignored by AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay of either optimizer (decoupled for AdamW)."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warm-up from 0 to ``learning_rate`` (0: none); cosine decay to 10% afterwards."""
    clipping: ClipConfig = Field(default_factory=NoClipConfig)
    """The clipping rule and its settings, e.g. ``{method: norm, max_norm: 1.0}``."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """``fp32``, ``bf16`` or ``fp16`` (autocast + dynamic loss scaling)."""
    activation_checkpointing: int = Field(0, ge=0)
    """Checkpoint every k-th block of the model (0: off)."""
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    """How spikes, divergence and stalling are recognised and scored."""
    recovery: RecoveryConfig = Field(default_factory=NoRecovery)
    """What a spike triggers: ``{policy: none}``, ``{policy: skip}`` or ``{policy: rewind,
    every: 50, max_rewinds: 3, lr_factor: 1.0, lr_steps: 0}`` (see :mod:`policies.recovery`)."""
    seed: int = 0
    """Seeds model init, data order and dropout on every worker."""
    report_every_steps: int = Field(50, ge=1)
    """Report telemetry (and evaluate on validation) every this many steps, and at the end.
    Keep reports seconds apart under Ray Train: V2 holds one report per worker and its
    controller collects them every ~2 s, so frequent reports block the loop (measured: 5.7x
    slower at 20 steps of 17 ms; see docs/benchmarks.md)."""
    checkpoint_every_steps: int = Field(100, ge=1)
    """Attach a full checkpoint to the first report at least this many steps after the last."""
    num_workers: int = Field(1, ge=1)
    """Data-parallel workers. 1 runs in-process inside a Tune trial; N uses Ray Train (DDP)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL; otherwise CPU with gloo."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs Ray reserves per worker (ignored when ``use_gpu``)."""
    max_failures: int = Field(0, ge=0)
    """Ray Train ``FailureConfig(max_failures)``: whole-group restarts from the last checkpoint."""
    price_per_worker_hour: float = Field(0.10, ge=0)
    """Dollars per worker-hour, for the cost objectives."""
    step_cost_seconds: float | None = Field(None, gt=0)
    """Calibrated device-seconds of one optimizer step on one worker (a study measures it per
    setting). When set, cost = steps x this x workers, independent of the machine's load;
    ``None``: cost follows wall-clock time."""
    target_val_accuracy: float | None = Field(None, ge=0, le=1)
    """Validation accuracy whose first reach sets ``steps_to_target``/``cost_to_target_dollars``
    (checked at each report; a study sets it to its accuracy floor)."""
    data_loader: Literal["arrow", "ray_data"] = "arrow"
    """``arrow``: each worker reads the Parquet split with pyarrow and takes a seeded, rank-strided
    shard (bit-exact resume). ``ray_data``: Ray Data shards via ``get_dataset_shard`` (streams
    datasets larger than memory; resume skips consumed batches but row order across restarts is
    Ray Data's)."""

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> TrainingSettings:
        if self.global_batch_size % self.num_workers:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by "
                f"num_workers {self.num_workers}"
            )
        return self

    @property
    def per_worker_batch_size(self) -> int:
        return self.global_batch_size // self.num_workers

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` applied (plain dicts become typed configs)."""
        return type(self).model_validate({**self.model_dump(), **changes})


class TrainConfig(TrainingSettings):
    """Everything one training run needs: the settings plus the data and the model."""

    dataset_dir: str
    """A directory written by ``train_loops.data.prepare_dataset``."""
    model: ModelSpec = Field(default_factory=ModelSpec)
    """Which model to build (built-in zoo name or ``package.module:factory``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (what Ray passes and checkpoints store as JSON)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from the plain dict Ray passes; an unknown key or a bad value raises
        ``ValueError`` naming it."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                raise ValueError(f"unknown training setting: {where}") from None
            raise ValueError(f"training setting {where}: {first['msg']}") from None
