"""The study spec: a YAML file or Python objects, validated by pydantic (unknown keys refused).

Example::

    spec = StudySpec.from_yaml("studies/digits.yaml")
    spec = StudySpec(name="digits", search=SearchSection(num_trials=8))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from policies.clipping import CLIP_CONFIGS, AGCConfig, AutoClipConfig, ZClipConfig
from train_loops.config import TrainConfig, TrainingSettings
from train_loops.data import DataSpec
from train_loops.models import ModelSpec

CLIP_METHODS = tuple(CLIP_CONFIGS)
SET_BY_THE_STUDY = {
    "step_cost_seconds": "measured per setting into cost_calibration.json",
    "target_val_accuracy": "it is constraints.min_val_accuracy",
}
"""Run settings a study fills in itself, refused in a study file."""


class SpecError(ValueError):
    """A study file that cannot be used; the message names the field and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(_Strict):
    """A float searched between ``low`` and ``high`` (log scale when ``log``)."""

    low: float
    high: float
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self

    @classmethod
    def searched_by(cls, config: type) -> FloatRange:
        """The default range a clipping config declares (``(low, high, log)``)."""
        low, high, log = config.search_range
        return cls(low=low, high=high, log=log)


class DataSection(_Strict):
    source: str = Field("digits", description="'digits' or a Parquet file/directory")
    label_column: str = "label"
    feature_columns: list[str] | None = None
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 0

    def to_data_spec(self) -> DataSpec:
        return DataSpec(
            source=self.source,
            label_column=self.label_column,
            feature_columns=tuple(self.feature_columns) if self.feature_columns else None,
            validation_fraction=self.validation_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )


class ModelSection(_Strict):
    name: str = "mlp"
    options: dict[str, Any] = Field(default_factory=dict)


class ClipSpace(_Strict):
    """Which clipping methods to try, and each one's own parameter range.

    ``norm``/``value`` ranges default to ``"probe"``: a log range around the quantiles of the
    gradient norms a short unclipped probe run measured (see :class:`ProbeSection`).
    """

    methods: list[Literal["none", "norm", "value", "agc", "autoclip", "zclip"]] = Field(
        default_factory=lambda: list(CLIP_METHODS), min_length=1
    )
    max_norm: FloatRange | Literal["probe"] = "probe"
    clip_value: FloatRange | Literal["probe"] = "probe"
    agc_clipping: FloatRange = FloatRange.searched_by(AGCConfig)
    autoclip_percentile: FloatRange = FloatRange.searched_by(AutoClipConfig)
    zclip_z_threshold: FloatRange = FloatRange.searched_by(ZClipConfig)


class SearchSpace(_Strict):
    clipping: ClipSpace = Field(default_factory=ClipSpace)
    precision: list[Literal["fp32", "bf16", "fp16"]] = Field(
        default_factory=lambda: ["fp32", "bf16", "fp16"], min_length=1
    )
    activation_checkpointing: list[int] = Field(default_factory=lambda: [0, 2], min_length=1)
    learning_rate: FloatRange | None = FloatRange(low=3e-4, high=3e-2)
    optimizer: list[Literal["adamw", "sgd"]] = Field(
        default_factory=lambda: ["adamw", "sgd"], min_length=1
    )
    warmup_steps: list[int] = Field(default_factory=lambda: [0, 20], min_length=1)
    recovery: list[Literal["none", "skip", "rewind"]] | None = Field(
        None,
        min_length=1,
        description="spike recovery policies to try (each with training.recovery's settings "
        "when it names the same policy, else its defaults); unset: training.recovery for all",
    )
    extra: dict[str, FloatRange | list[Any]] = Field(
        default_factory=dict,
        description="more training settings to search: a range or a list of choices",
    )

    @model_validator(mode="after")
    def _known_extras(self) -> SearchSpace:
        unknown = sorted(set(self.extra) - set(TrainingSettings.model_fields))
        if unknown:
            raise ValueError(f"extra names unknown training setting(s): {', '.join(unknown)}")
        return self


class ProbeSection(_Strict):
    """The short unclipped run whose gradient norms set the norm/value clip ranges."""

    steps: int = Field(60, ge=5)
    low_quantile: float = Field(0.10, gt=0, lt=1)
    high_quantile: float = Field(0.999, gt=0, le=1)


class SearchSection(_Strict):
    num_trials: int = Field(8, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    sampler: Literal["tpe", "gp", "nsga2", "random"] = "tpe"
    seed: int = 0
    space: SearchSpace = Field(default_factory=SearchSpace)
    probe: ProbeSection = Field(default_factory=ProbeSection)
    stop_on_divergence: bool = True


class ObjectivesSection(_Strict):
    """All minimised: instability (the detector's score), a cost, and optionally val loss.

    ``cost_to_target_dollars`` (default) charges the calibrated cost of the steps a run took to
    first reach ``constraints.min_val_accuracy``: it rewards settings that get to a usable
    model sooner, which a fixed step budget (``cost_dollars``, ``device_seconds``: the whole
    run) cannot see."""

    cost: Literal["cost_to_target_dollars", "cost_dollars", "device_seconds"] = (
        "cost_to_target_dollars"
    )
    validation_loss: bool = Field(False, description="add val_loss as a third objective")


class ConstraintsSection(_Strict):
    min_val_accuracy: float | None = Field(0.8, ge=0, le=1)
    max_peak_memory_mb: float | None = Field(None, gt=0)
    allow_stalled: bool = Field(
        False,
        description="a run whose validation loss fell by less than "
        "training.stability.min_loss_reduction (default 0.1) is infeasible unless this is true",
    )


class SelectionSection(_Strict):
    policy: Literal["knee", "cheapest_within"] = "knee"
    tolerance: float = Field(
        0.1,
        ge=0,
        description="instability slack: cheapest_within's, and how much less stable a trial "
        "with a lower validation loss may be and still win",
    )
    cost_tolerance: float = Field(
        0.1, ge=0, description="relative cost slack for a trial with a lower validation loss"
    )


class FinalFitSection(_Strict):
    enabled: bool = False
    num_workers: int = Field(2, ge=1)
    epochs: int | None = Field(None, ge=1)


class StudySpec(_Strict):
    """A whole study: data, model, shared training settings, search, objectives, selection."""

    name: str = Field("study", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage: str = Field("runs", description="directory for Tune results and the Optuna journal")
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    search: SearchSection = Field(default_factory=SearchSection)
    objectives: ObjectivesSection = Field(default_factory=ObjectivesSection)
    constraints: ConstraintsSection = Field(default_factory=ConstraintsSection)
    selection: SelectionSection = Field(default_factory=SelectionSection)
    final_fit: FinalFitSection = Field(default_factory=FinalFitSection)

    @model_validator(mode="after")
    def _study_sets_these(self) -> StudySpec:
        for name in SET_BY_THE_STUDY:
            # None is the default and round-trips (model_dump_json then model_validate_json)
            if getattr(self.training, name) is not None or name in self.search.space.extra:
                raise ValueError(
                    f"training.{name} is set by the study ({SET_BY_THE_STUDY[name]}); remove it"
                )
        return self

    @model_validator(mode="after")
    def _target_for_cost(self) -> StudySpec:
        if self.objectives.cost == "cost_to_target_dollars" and (
            self.constraints.min_val_accuracy is None
        ):
            raise ValueError(
                "objectives.cost 'cost_to_target_dollars' needs constraints.min_val_accuracy "
                "(the target); set one or use cost_dollars"
            )
        return self

    @classmethod
    def from_yaml(cls, path: Path | str) -> StudySpec:
        """Read and validate a YAML study file; :class:`SpecError` names the field."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text())
        except OSError as error:
            raise SpecError(f"{path}: cannot read: {error.strerror}") from error
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(error, "problem", None) or "syntax error"
            raise SpecError(f"{path}: not valid YAML{at}: {problem}") from None
        if not isinstance(values, dict):
            raise SpecError(f"{path}: expected a mapping of settings at the top level")
        return cls.from_dict(values, origin=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "study") -> StudySpec:
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise SpecError(f"{origin}: {describe_validation_error(error)}") from None

    def train_config(self, dataset_dir: Path | str, **overrides: Any) -> TrainConfig:
        """The shared training settings as the typed object the loop takes."""
        values = {
            **self.training.model_dump(),
            "target_val_accuracy": self.constraints.min_val_accuracy,
            **overrides,
            "model": ModelSpec(self.model.name, dict(self.model.options)),
            "dataset_dir": str(dataset_dir),
        }
        return TrainConfig.model_validate(values)


UNKNOWN_KEY_ERRORS = ("extra_forbidden", "unexpected_keyword_argument")


def describe_validation_error(error: ValidationError) -> str:
    """The first problem as ``field.path: what is wrong``, in one line; a misspelt key is
    named before anything it caused (a required key then looks missing)."""
    errors = error.errors()
    unknown = [e for e in errors if e["type"] in UNKNOWN_KEY_ERRORS]
    first = (unknown or errors)[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] in UNKNOWN_KEY_ERRORS:
        return f"unknown key {location!r}"
    if first["type"] == "missing":
        return f"missing key {location!r}"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{location}: {message}{more}"
