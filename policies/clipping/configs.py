"""Typed clipping configs: one per rule, told apart by ``method`` (a pydantic discriminated
union), each building its policy object and declaring the one parameter a search tunes.

This is the one table of clipping methods: the study spec validates ``training.clipping``
against :data:`ClipConfig`, the search space reads each class's :attr:`~ClipConfigBase.tuned`,
:attr:`~ClipConfigBase.search_name` and :attr:`~ClipConfigBase.search_range`, the factory
builds through :meth:`~ClipConfigBase.build`, and reports describe through
:meth:`~ClipConfigBase.describe`. Defaults are the policies' own (read off their dataclass
fields), and so are the value checks (each config builds its policy once to validate).

>>> config = parse_clip_config({"method": "norm", "max_norm": 1.0})
>>> config.build()
ClipByNorm(max_norm=1.0)
>>> NormClipConfig.search_name, config.tuned_value
('max_norm', 1.0)
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from torch import nn

from policies.clipping.agc import AdaptiveGradientClipping
from policies.clipping.autoclip import AutoClip
from policies.clipping.base import ClipPolicy
from policies.clipping.no_clipping import NoClipping
from policies.clipping.norm import ClipByNorm
from policies.clipping.value import ClipByValue
from policies.clipping.zclip import ZClip, ZClipMode

PROBE = "probe"
"""A :attr:`~ClipConfigBase.search_range` measured by the study's gradient probe."""


def _default(policy: type, name: str) -> Any:
    """The default of field ``name`` of the policy dataclass ``policy``: one set of defaults."""
    return next(f.default for f in dataclasses.fields(policy) if f.name == name)


class ClipConfigBase(BaseModel):
    """What every clipping config has: ``method``, its policy, and what a search tunes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    tuned: ClassVar[str | None] = None
    """The field a search tunes (``None``: nothing to tune)."""
    search_name: ClassVar[str | None] = None
    """That parameter's name in Optuna and in the trial table."""
    search_range: ClassVar[tuple[float, float, bool] | str | None] = None
    """Default search range ``(low, high, log)``, or :data:`PROBE` (measured per study)."""

    @model_validator(mode="after")
    def _policy_accepts(self) -> ClipConfigBase:
        self.build(None)  # the policy's own checks name any bad value
        return self

    def build(self, model: nn.Module | None = None) -> ClipPolicy:
        """The policy object. ``model`` (maybe DDP-wrapped) is needed by AGC's ``exclude``."""
        raise NotImplementedError

    @property
    def tuned_value(self) -> float | None:
        return None if self.tuned is None else getattr(self, self.tuned)

    def describe(self) -> str:
        """``norm(max_norm=0.84)``: the method and its tuned value."""
        if self.tuned is None:
            return self.method  # type: ignore[attr-defined]
        return f"{self.method}({self.tuned}={self.tuned_value:.3g})"  # type: ignore[attr-defined]


class NoClipConfig(ClipConfigBase):
    """Leave gradients alone (the norm is still measured and reported)."""

    method: Literal["none"] = "none"

    def build(self, model: nn.Module | None = None) -> ClipPolicy:
        return NoClipping()


class NormClipConfig(ClipConfigBase):
    """Clip the global L2 norm (:class:`~policies.clipping.norm.ClipByNorm`)."""

    method: Literal["norm"] = "norm"
    max_norm: float
    """Largest global gradient norm let through; > 0."""
    tuned: ClassVar[str | None] = "max_norm"
    search_name: ClassVar[str | None] = "max_norm"
    search_range: ClassVar[tuple[float, float, bool] | str | None] = PROBE

    def build(self, model: nn.Module | None = None) -> ClipPolicy:
        return ClipByNorm(self.max_norm)


class ValueClipConfig(ClipConfigBase):
    """Clamp every element (:class:`~policies.clipping.value.ClipByValue`)."""

    method: Literal["value"] = "value"
    clip_value: float
    """Largest absolute value any gradient element may keep; > 0."""
    tuned: ClassVar[str | None] = "clip_value"
    search_name: ClassVar[str | None] = "clip_value"
    search_range: ClassVar[tuple[float, float, bool] | str | None] = PROBE

    def build(self, model: nn.Module | None = None) -> ClipPolicy:
        return ClipByValue(self.clip_value)


class AGCConfig(ClipConfigBase):
    """Adaptive gradient clipping (:class:`~policies.clipping.agc.AdaptiveGradientClipping`)."""

    method: Literal["agc"] = "agc"
    clipping: float = _default(AdaptiveGradientClipping, "clipping")
    """Largest gradient-to-weight norm ratio a unit may keep; > 0."""
    eps: float = _default(AdaptiveGradientClipping, "eps")
    """Floor on a unit's weight norm; > 0."""
    exclude: list[str] = Field(default_factory=lambda: ["head"])
    """Module-name prefixes left unclipped (the classifier ``head``, as the paper does)."""
    tuned: ClassVar[str | None] = "clipping"
    search_name: ClassVar[str | None] = "agc_clipping"
    search_range: ClassVar[tuple[float, float, bool] | str | None] = (0.005, 0.2, True)

    def build(self, model: nn.Module | None = None) -> ClipPolicy:
        if model is None:
            for prefix in self.exclude:
                if not prefix:
                    raise ValueError(f"exclude entries must be non-empty strings, got {prefix!r}")
            return AdaptiveGradientClipping(clipping=self.clipping, eps=self.eps)
        return AdaptiveGradientClipping.for_model(
            model, clipping=self.clipping, eps=self.eps, exclude=tuple(self.exclude)
        )


class AutoClipConfig(ClipConfigBase):
    """Clip to a percentile of the norm history (:class:`~policies.clipping.autoclip.AutoClip`)."""

    method: Literal["autoclip"] = "autoclip"
    percentile: float = _default(AutoClip, "percentile")
    """Percentile of the norm history used as the threshold, in [0, 100]."""
    window: int | None = _default(AutoClip, "window")
    """Keep only the last ``window`` norms; ``None`` keeps all."""
    tuned: ClassVar[str | None] = "percentile"
    search_name: ClassVar[str | None] = "autoclip_percentile"
    search_range: ClassVar[tuple[float, float, bool] | str | None] = (1.0, 50.0, False)

    def build(self, model: nn.Module | None = None) -> ClipPolicy:
        return AutoClip(percentile=self.percentile, window=self.window)


class ZClipConfig(ClipConfigBase):
    """Clip z-score outliers of the norm (:class:`~policies.clipping.zclip.ZClip`)."""

    method: Literal["zclip"] = "zclip"
    alpha: float = _default(ZClip, "alpha")
    """EMA smoothing factor, in (0, 1)."""
    z_threshold: float = _default(ZClip, "z_threshold")
    """z-score above which a norm is clipped; > 0."""
    warmup_steps: int = _default(ZClip, "warmup_steps")
    """Norms collected before the EMA starts; >= 1."""
    mode: ZClipMode = _default(ZClip, "mode")
    """``reciprocal`` (the paper's) or ``zscore``."""
    warmup_max_norm: float | None = _default(ZClip, "warmup_max_norm")
    """Optional hard cap on the norm during warm-up."""
    tuned: ClassVar[str | None] = "z_threshold"
    search_name: ClassVar[str | None] = "zclip_z_threshold"
    search_range: ClassVar[tuple[float, float, bool] | str | None] = (1.5, 4.0, False)

    def build(self, model: nn.Module | None = None) -> ClipPolicy:
        return ZClip(
            alpha=self.alpha,
            z_threshold=self.z_threshold,
            warmup_steps=self.warmup_steps,
            mode=self.mode,
            warmup_max_norm=self.warmup_max_norm,
        )


CLIP_CONFIGS: dict[str, type[ClipConfigBase]] = {
    "none": NoClipConfig,
    "norm": NormClipConfig,
    "value": ValueClipConfig,
    "agc": AGCConfig,
    "autoclip": AutoClipConfig,
    "zclip": ZClipConfig,
}
"""Every clipping method, by name."""

ClipConfig = Annotated[
    NoClipConfig | NormClipConfig | ValueClipConfig | AGCConfig | AutoClipConfig | ZClipConfig,
    Field(discriminator="method"),
]
"""Any clipping config; ``method`` picks the class."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClipConfig)


def parse_clip_config(values: Any) -> ClipConfigBase:
    """A clipping config from a mapping (or a config); ``ValueError`` in one line naming the
    method and the bad key or value."""
    if isinstance(values, ClipConfigBase):
        return values
    try:
        return _ADAPTER.validate_python(values)
    except ValidationError as error:
        raise ValueError(describe_clip_error(values, error)) from None


def describe_clip_error(values: Any, error: ValidationError) -> str:
    """One line for the first problem pydantic found in a clipping config."""
    first = error.errors()[0]
    where = [str(part) for part in first["loc"]]
    key = where[-1] if len(where) > 1 else None
    method = values.get("method") if isinstance(values, dict) else None
    kind = first["type"]
    allowed = list(CLIP_CONFIGS)
    if kind == "union_tag_not_found":
        return f"a clipping config needs a 'method' (one of {allowed})"
    if kind == "union_tag_invalid":
        return f"unknown clipping method {method!r}; expected one of {allowed}"
    if kind == "extra_forbidden":
        fields = sorted(set(CLIP_CONFIGS[str(method)].model_fields) - {"method"})
        return f"unknown key {key!r} for clipping method {method!r}; allowed: {fields}"
    if kind == "missing":
        return f"clipping method {method!r} needs key {key!r}"
    message = first["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"clipping method {method!r}: {message}"
    return f"clipping method {method!r}: {key}: {message}, got {first.get('input')!r}"
