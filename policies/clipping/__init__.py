"""Gradient-clipping policies: one rule per module, built from config by
:func:`build_clip_policy`, all satisfying the :class:`ClipPolicy` protocol."""

from policies.clipping.agc import AdaptiveGradientClipping
from policies.clipping.autoclip import AutoClip
from policies.clipping.base import ClipPolicy, ClipReport
from policies.clipping.configs import (
    CLIP_CONFIGS,
    AGCConfig,
    AutoClipConfig,
    ClipConfig,
    ClipConfigBase,
    NoClipConfig,
    NormClipConfig,
    ValueClipConfig,
    ZClipConfig,
    parse_clip_config,
)
from policies.clipping.factory import CLIP_METHODS, build_clip_policy
from policies.clipping.no_clipping import NoClipping
from policies.clipping.norm import ClipByNorm
from policies.clipping.value import ClipByValue
from policies.clipping.zclip import ZClip

__all__ = [
    "CLIP_CONFIGS",
    "CLIP_METHODS",
    "AGCConfig",
    "AdaptiveGradientClipping",
    "AutoClip",
    "AutoClipConfig",
    "ClipByNorm",
    "ClipByValue",
    "ClipConfig",
    "ClipConfigBase",
    "ClipPolicy",
    "ClipReport",
    "NoClipConfig",
    "NoClipping",
    "NormClipConfig",
    "ValueClipConfig",
    "ZClip",
    "ZClipConfig",
    "build_clip_policy",
    "parse_clip_config",
]
