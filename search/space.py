"""The search space as an Optuna define-by-run function, and its inverse: trial → TrainConfig.

Parameter names Optuna sees (and the trial table shows): ``clip_method``, one conditional
threshold per method (``max_norm``, ``clip_value``, ``agc_clipping``, ``autoclip_percentile``,
``zclip_z_threshold``), ``precision``, ``activation_checkpointing``, ``learning_rate``,
``optimizer``, ``warmup_steps``, ``recovery`` (when the spec searches it) and any ``extra``
training setting the spec adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies import build_recovery_policy
from policies.clipping import CLIP_CONFIGS
from policies.recovery import recovery_settings
from search.cost_calibration import charged
from search.spec import FloatRange, SearchSpace
from train_loops.config import TrainConfig

FIXED_KEYS = ("train", "train_storage", "step_costs")
"""Keys of a Tune trial config that the study fixes; every other key is a searched parameter:
``train`` (the shared TrainConfig as a dict), ``train_storage`` (where N-worker trials keep
their Ray Train runs), ``step_costs`` (the study's calibrated seconds per step)."""


@dataclass(frozen=True)
class ResolvedSpace:
    """A :class:`SearchSpace` with the probe's ranges filled in for norm and value clipping."""

    space: SearchSpace
    max_norm: FloatRange
    clip_value: FloatRange

    def range_for(self, parameter: str) -> FloatRange:
        if parameter == "max_norm":
            return self.max_norm
        if parameter == "clip_value":
            return self.clip_value
        return getattr(self.space.clipping, parameter)

    def __call__(self, trial: Any) -> None:
        """The define-by-run function ``OptunaSearch(space=...)`` calls with each new trial.

        A method, not a closure, so Tune can pickle the searcher with its state."""
        space = self.space
        method = trial.suggest_categorical("clip_method", list(space.clipping.methods))
        name = CLIP_CONFIGS[method].search_name
        if name is not None:
            _suggest(trial, name, self.range_for(name))
        trial.suggest_categorical("precision", list(space.precision))
        trial.suggest_categorical("activation_checkpointing", list(space.activation_checkpointing))
        if space.learning_rate is not None:
            _suggest(trial, "learning_rate", space.learning_rate)
        trial.suggest_categorical("optimizer", list(space.optimizer))
        trial.suggest_categorical("warmup_steps", list(space.warmup_steps))
        if space.recovery is not None:
            trial.suggest_categorical("recovery", list(space.recovery))
        for name, choice in space.extra.items():
            if isinstance(choice, FloatRange):
                _suggest(trial, name, choice)
            else:
                trial.suggest_categorical(name, list(choice))


def _suggest(trial: Any, name: str, bounds: FloatRange) -> float:
    return trial.suggest_float(name, bounds.low, bounds.high, log=bounds.log)


def trial_train_config(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """Apply a trial's flat parameters (as Optuna named them) to the shared training config.

    The trial's clipping method keeps the base config's other settings of that method (say a
    ZClip warm-up cap from ``training.clipping``); its tuned parameter is the trial's."""
    params = dict(params)
    changes: dict[str, Any] = {}
    method = params.pop("clip_method", None)
    thresholds = {  # every method's threshold leaves params; only this trial's is used
        config.search_name: params.pop(config.search_name, None)
        for config in CLIP_CONFIGS.values()
        if config.search_name is not None
    }
    if method is not None:
        config = CLIP_CONFIGS[method]
        settings = base.clipping.model_dump() if base.clipping.method == method else {}
        settings["method"] = method
        if config.tuned is not None:
            settings[config.tuned] = thresholds[config.search_name]
        changes["clipping"] = config.model_validate(settings)
    recovery = params.pop("recovery", None)
    if recovery is not None:  # the base's settings of that policy (say rewind's every), if any
        same = base.recovery.policy == recovery
        settings = recovery_settings(base.recovery) if same else {"policy": recovery}
        changes["recovery"] = build_recovery_policy(settings)
    changes.update(params)
    return base.replace(**changes)


def search_params(config: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters of a Tune trial config (everything but :data:`FIXED_KEYS`)."""
    return {k: v for k, v in config.items() if k not in FIXED_KEYS}


def trial_config(config: dict[str, Any]) -> TrainConfig:
    """The typed run config of a Tune trial config: the shared settings, the trial's
    parameters applied, charged at the study's calibrated cost of its setting."""
    train_config = trial_train_config(TrainConfig.from_dict(config["train"]), search_params(config))
    return charged(train_config, config.get("step_costs") or {})


def describe_params(params: dict[str, Any]) -> str:
    """``norm(max_norm=0.84) fp16 ac=2 lr=3.1e-03`` — one trial's settings, short."""
    method = params.get("clip_method", "?")
    config = CLIP_CONFIGS.get(method)
    clip = method
    if config is not None and config.search_name in params:
        clip += f"({config.tuned}={params[config.search_name]:.3g})"
    parts = [clip, str(params.get("precision", "")), f"ac={params.get('activation_checkpointing')}"]
    if "learning_rate" in params:
        parts.append(f"lr={params['learning_rate']:.2e}")
    if "optimizer" in params:
        parts.append(str(params["optimizer"]))
    if "warmup_steps" in params:
        parts.append(f"warmup={params['warmup_steps']}")
    if "recovery" in params:
        parts.append(f"recovery={params['recovery']}")
    return " ".join(parts)
