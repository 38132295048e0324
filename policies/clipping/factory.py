"""Build a clipping policy from its config entry (a mapping or a typed config)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from policies.clipping.base import ClipPolicy
from policies.clipping.configs import CLIP_CONFIGS, ClipConfigBase, parse_clip_config

CLIP_METHODS: dict[str, str | None] = {name: config.tuned for name, config in CLIP_CONFIGS.items()}
"""Every clipping method, mapped to the name of the parameter a search tunes (``None``: none)."""


def build_clip_policy(
    config: Mapping[str, Any] | ClipConfigBase, model: nn.Module | None = None
) -> ClipPolicy:
    """The clipping policy that ``config`` describes (see :mod:`policies.clipping.configs`).

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
    if not isinstance(config, Mapping | ClipConfigBase):
        raise ValueError(f"a clipping config must be a mapping, got {config!r}")
    typed = parse_clip_config(dict(config) if isinstance(config, Mapping) else config)
    if typed.method == "agc" and model is None and typed.exclude:  # type: ignore[attr-defined]
        raise ValueError(
            f"agc needs the model to resolve exclude={typed.exclude!r}; pass model"  # type: ignore[attr-defined]
        )
    return typed.build(model)
