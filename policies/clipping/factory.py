"""Build a clipping policy from its config entry: the one place that knows every method."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from policies.clipping.agc import AdaptiveGradientClipping
from policies.clipping.autoclip import AutoClip
from policies.clipping.base import ClipPolicy
from policies.clipping.no_clipping import NoClipping
from policies.clipping.norm import ClipByNorm
from policies.clipping.value import ClipByValue
from policies.clipping.zclip import ZClip

logger = logging.getLogger(__name__)

CLIP_METHODS: dict[str, str | None] = {
    "none": None,
    "norm": "max_norm",
    "value": "clip_value",
    "agc": "clipping",
    "autoclip": "percentile",
    "zclip": "z_threshold",
}
"""Every clipping method, mapped to the name of the parameter a search tunes (``None``: none)."""


def _agc(options: dict[str, Any], model: nn.Module | None) -> ClipPolicy:
    exclude = options.pop("exclude", ("head",))
    if model is None:
        if exclude:
            raise ValueError(f"agc needs the model to resolve exclude={exclude!r}; pass model")
        return AdaptiveGradientClipping(**options)
    return AdaptiveGradientClipping.for_model(model, exclude=exclude, **options)


# method -> (required keys, optional keys, builder taking the options and the model)
_BUILDERS: dict[
    str,
    tuple[frozenset[str], frozenset[str], Callable[[dict[str, Any], nn.Module | None], ClipPolicy]],
] = {
    "none": (frozenset(), frozenset(), lambda options, model: NoClipping()),
    "norm": (frozenset({"max_norm"}), frozenset(), lambda options, model: ClipByNorm(**options)),
    "value": (
        frozenset({"clip_value"}),
        frozenset(),
        lambda options, model: ClipByValue(**options),
    ),
    "agc": (frozenset(), frozenset({"clipping", "eps", "exclude"}), _agc),
    "autoclip": (
        frozenset(),
        frozenset({"percentile", "window"}),
        lambda options, model: AutoClip(**options),
    ),
    "zclip": (
        frozenset(),
        frozenset({"alpha", "z_threshold", "warmup_steps", "mode", "warmup_max_norm"}),
        lambda options, model: ZClip(**options),
    ),
}
assert set(_BUILDERS) == set(CLIP_METHODS)


def build_clip_policy(config: Mapping[str, Any], model: nn.Module | None = None) -> ClipPolicy:
    """The clipping policy that ``config`` describes.

    ``config["method"]`` is one of :data:`CLIP_METHODS`; the other keys are that method's
    arguments (all optional except the threshold of ``norm`` and ``value``)::

        {"method": "none"}
        {"method": "norm", "max_norm": 1.0}
        {"method": "value", "clip_value": 0.5}
        {"method": "agc", "clipping": 0.01, "eps": 1e-3, "exclude": ["head"]}
        {"method": "autoclip", "percentile": 10.0, "window": None}
        {"method": "zclip", "alpha": 0.97, "z_threshold": 2.5, "warmup_steps": 25,
         "mode": "reciprocal", "warmup_max_norm": None}

    ``model`` (possibly wrapped in DistributedDataParallel) is needed only by ``agc``, to find
    the parameters under the ``exclude`` module-name prefixes (default ``["head"]``, the final
    classifier of our model zoo; ``[]`` excludes nothing).

    Raises ``ValueError`` naming an unknown method, an unknown or missing key, or a bad value.

    >>> build_clip_policy({"method": "norm", "max_norm": 1.0})
    ClipByNorm(max_norm=1.0)
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"a clipping config must be a mapping, got {config!r}")
    if "method" not in config:
        raise ValueError(f"a clipping config needs a 'method' (one of {list(CLIP_METHODS)})")
    method = config["method"]
    if method not in _BUILDERS:
        raise ValueError(
            f"unknown clipping method {method!r}; expected one of {list(CLIP_METHODS)}"
        )
    required, optional, build = _BUILDERS[method]
    options = {key: value for key, value in config.items() if key != "method"}
    unknown = sorted(set(options) - required - optional)
    if unknown:
        allowed = sorted(required | optional)
        raise ValueError(
            f"unknown key(s) {unknown} for clipping method {method!r}; allowed: {allowed}"
        )
    missing = sorted(required - set(options))
    if missing:
        raise ValueError(f"clipping method {method!r} needs key(s) {missing}")
    return build(options, model)
