"""Gradient-clipping policies: one rule per module, built from config by
:func:`build_clip_policy`, all satisfying the :class:`ClipPolicy` protocol."""

from policies.clipping.agc import AdaptiveGradientClipping
from policies.clipping.autoclip import AutoClip
from policies.clipping.base import ClipPolicy, ClipReport
from policies.clipping.factory import CLIP_METHODS, build_clip_policy
from policies.clipping.no_clipping import NoClipping
from policies.clipping.norm import ClipByNorm
from policies.clipping.value import ClipByValue
from policies.clipping.zclip import ZClip

__all__ = [
    "CLIP_METHODS",
    "AdaptiveGradientClipping",
    "AutoClip",
    "ClipByNorm",
    "ClipByValue",
    "ClipPolicy",
    "ClipReport",
    "NoClipping",
    "ZClip",
    "build_clip_policy",
]
