"""The typed configuration of one training run.

Ray hands the worker a plain dict; :meth:`TrainConfig.from_dict` is the one place that turns
it into these objects (unknown keys are refused), and :meth:`TrainConfig.to_dict` goes back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from policies import StabilityConfig
from train_loops.models import ModelSpec

PRECISIONS = ("fp32", "bf16", "fp16")
DATA_LOADERS = ("ray_data", "arrow")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; the same object drives 1 or N workers."""

    dataset_dir: str
    """A directory written by ``train_loops.data.prepare_dataset``."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """Which model to build (built-in zoo name or ``package.module:factory``)."""
    epochs: int = 4
    """Passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (``None``: run all epochs)."""
    global_batch_size: int = 64
    """Rows per optimizer step over all workers; each worker takes ``global / num_workers``."""
    learning_rate: float = 3e-3
    """Peak learning rate, reached after ``warmup_steps``."""
    optimizer: str = "adamw"
    """``adamw`` or ``sgd`` (with ``momentum``)."""
    momentum: float = 0.9
    """SGD momentum (ignored by AdamW)."""
    weight_decay: float = 0.0
    """Weight decay of either optimizer (decoupled for AdamW)."""
    warmup_steps: int = 20
    """Linear warm-up from 0 to ``learning_rate`` (0: none); cosine decay to 10% afterwards."""
    clipping: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    """Entry for ``policies.build_clip_policy`` (e.g. ``{"method": "norm", "max_norm": 1.0}``)."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` or ``fp16`` (autocast + dynamic loss scaling)."""
    activation_checkpointing: int = 0
    """Checkpoint every k-th block of the model (0: off)."""
    stability: dict[str, Any] = field(default_factory=dict)
    """Overrides for ``policies.StabilityConfig``."""
    seed: int = 0
    """Seeds model init, data order and dropout on every worker."""
    report_every_steps: int = 50
    """Report telemetry (and evaluate on validation) every this many steps, and at the end.
    Keep reports seconds apart under Ray Train: V2 holds one report per worker and its
    controller collects them every ~2 s, so frequent reports block the loop (measured: 5.7x
    slower at 20 steps of 17 ms; see docs/benchmarks.md)."""
    checkpoint_every_steps: int = 100
    """Attach a full checkpoint to the first report at least this many steps after the last."""
    num_workers: int = 1
    """Data-parallel workers. 1 runs in-process inside a Tune trial; N uses Ray Train (DDP)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL; otherwise CPU with gloo."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves per worker (ignored when ``use_gpu``)."""
    max_failures: int = 0
    """Ray Train ``FailureConfig(max_failures)``: whole-group restarts from the last checkpoint."""
    price_per_worker_hour: float = 0.10
    """Dollars per worker-hour, for the cost telemetry."""
    step_cost_seconds: float | None = None
    """Calibrated device-seconds of one optimizer step on one worker (a study measures it per
    setting). When set, cost = steps x this x workers, independent of the machine's load;
    ``None``: cost follows wall-clock time."""
    target_val_accuracy: float | None = None
    """Validation accuracy whose first reach sets ``steps_to_target``/``cost_to_target_dollars``
    (checked at each report; a study sets it to its accuracy floor)."""
    data_loader: str = "arrow"
    """``arrow``: each worker reads the Parquet split with pyarrow and takes a seeded, rank-strided
    shard (bit-exact resume). ``ray_data``: Ray Data shards via ``get_dataset_shard`` (streams
    datasets larger than memory; resume skips consumed batches but row order across restarts is
    Ray Data's)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.step_cost_seconds is not None and not self.step_cost_seconds > 0:
            raise ValueError(f"step_cost_seconds must be > 0, got {self.step_cost_seconds}")
        StabilityConfig.from_mapping(self.stability)
        if self.data_loader not in DATA_LOADERS:
            raise ValueError(f"data_loader must be one of {DATA_LOADERS}, got {self.data_loader!r}")
        for name in (
            "epochs",
            "global_batch_size",
            "report_every_steps",
            "checkpoint_every_steps",
            "num_workers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.global_batch_size % self.num_workers:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by "
                f"num_workers {self.num_workers}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.activation_checkpointing < 0:
            raise ValueError(
                f"activation_checkpointing must be >= 0, got {self.activation_checkpointing}"
            )
        if "method" not in self.clipping:
            raise ValueError(f"clipping needs a 'method', got {self.clipping}")

    @property
    def per_worker_batch_size(self) -> int:
        return self.global_batch_size // self.num_workers

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["model"] = {"name": self.model.name, "options": dict(self.model.options)}
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from the plain dict Ray passes; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        values = dict(values)
        model = values.get("model", {})
        if isinstance(model, dict):
            values["model"] = ModelSpec(
                name=model.get("name", "mlp"), options=dict(model.get("options", {}))
            )
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
