"""Adaptive gradient clipping (AGC), Brock et al. 2021, "High-Performance Large-Scale Image
Recognition Without Normalization", section 4."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from policies import _validation
from policies.clipping.base import ClipReport, global_norm, gradients, no_clip, refuse_state

logger = logging.getLogger(__name__)

# Prefixes that wrappers add to parameter names: DistributedDataParallel (``module.``) and
# ``torch.compile`` (``_orig_mod.``). Exclusions are matched against the unwrapped names.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unitwise_norm(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit: over all dimensions but the first for a matrix or kernel
    (rows of a Linear weight, output channels of a Conv weight), keeping dimensions so it
    broadcasts against ``tensor``; over the whole tensor for a vector or scalar (biases, gains).
    """
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor)
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.ndim)), keepdim=True)


def unwrapped_name(name: str) -> str:
    """``name`` without the prefixes DDP and ``torch.compile`` add."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                stripped = True
    return name


@dataclass(frozen=True)
class AdaptiveGradientClipping:
    """Clip each output unit's gradient relative to the norm of its weights.

    For every unit ``i`` (a row of a weight matrix, an output channel of a conv kernel, a whole
    bias vector) with weights ``W_i`` and gradient ``G_i``::

        if ||G_i|| / max(||W_i||, eps) > clipping:
            G_i <- clipping * max(||W_i||, eps) / ||G_i|| * G_i

    The paper leaves the final classifier layer unclipped; pass its parameters as
    ``excluded_parameters`` (:meth:`for_model` finds them by module name).

    >>> agc = AdaptiveGradientClipping.for_model(model, exclude=("head",))  # doctest: +SKIP
    >>> report = agc(model.parameters())  # doctest: +SKIP
    """

    clipping: float = 0.01
    """lambda: the largest gradient-to-weight norm ratio a unit may keep; > 0."""
    eps: float = 1e-3
    """Floor on a unit's weight norm, so units initialised at zero can still move; > 0."""
    excluded_parameters: tuple[nn.Parameter, ...] = field(default=(), repr=False, compare=False)
    """Parameters left unclipped (their gradients still count in the reported norm)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "clipping", _validation.positive("clipping", self.clipping))
        object.__setattr__(self, "eps", _validation.positive("eps", self.eps))
        object.__setattr__(self, "excluded_parameters", tuple(self.excluded_parameters))
        object.__setattr__(self, "_excluded_ids", frozenset(map(id, self.excluded_parameters)))

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        *,
        clipping: float = 0.01,
        eps: float = 1e-3,
        exclude: Iterable[str] = ("head",),
    ) -> AdaptiveGradientClipping:
        """AGC that leaves unclipped every parameter of ``model`` under a module named by one of
        the ``exclude`` prefixes.

        A prefix matches a module and everything inside it: ``"head"`` matches ``head.weight``
        and ``head.proj.bias`` but not ``header.weight``. Names are taken without the
        ``module.`` prefix of DistributedDataParallel. A prefix that matches no parameter is
        logged as a warning, since the layer it meant is then clipped after all.
        """
        if isinstance(exclude, str):
            raise ValueError(f"exclude must be a list of module-name prefixes, got {exclude!r}")
        prefixes = tuple(exclude)
        for prefix in prefixes:
            if not isinstance(prefix, str) or not prefix:
                raise ValueError(f"exclude entries must be non-empty strings, got {prefix!r}")
        excluded: list[nn.Parameter] = []
        matched: set[str] = set()
        for name, parameter in model.named_parameters():
            name = unwrapped_name(name)
            hits = [p for p in prefixes if name == p or name.startswith(p.rstrip(".") + ".")]
            if hits:
                excluded.append(parameter)
                matched.update(hits)
        for prefix in prefixes:
            if prefix not in matched:
                logger.warning(
                    "AGC exclude prefix %r matches no parameter of %s; nothing is excluded for it",
                    prefix,
                    type(model).__name__,
                )
        return cls(clipping=clipping, eps=eps, excluded_parameters=tuple(excluded))

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        parameters = [p for p in parameters if p.grad is not None]
        norm = global_norm(gradients(parameters))
        clipped_parts = []
        finite = torch.isfinite(norm)
        for parameter in parameters:
            if id(parameter) in self._excluded_ids:
                continue
            grad = parameter.grad
            max_norm = unitwise_norm(parameter.detach()).clamp(min=self.eps) * self.clipping
            grad_norm = unitwise_norm(grad)
            too_large = (grad_norm > max_norm) & finite.to(grad.device)
            # The clamp only avoids 0/0 in the branch ``where`` discards.
            factor = max_norm / grad_norm.clamp(min=torch.finfo(grad_norm.dtype).tiny)
            grad.mul_(torch.where(too_large, factor, 1.0))
            clipped_parts.append(too_large.any().to(norm.device))
        if not clipped_parts:
            return no_clip(norm)
        return ClipReport(norm, torch.stack(clipped_parts).any())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        refuse_state(self, state)
