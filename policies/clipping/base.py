"""What every clipping policy is: the :class:`ClipPolicy` protocol and the :class:`ClipReport`
it returns, plus the few tensor helpers the policies share.

Every helper works on tensors where the gradients live and never reads a value back to the host,
so a policy adds no device synchronisation to the training step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn


class ClipReport(NamedTuple):
    """What one call of a clipping policy did.

    Both fields are 0-dim tensors on the gradients' device, so building the report needs no
    device synchronisation; call ``.item()`` when the value is needed on the host.
    """

    grad_norm: torch.Tensor
    """Global L2 norm of all gradients, measured before clipping (may be ``inf``/``nan``)."""
    clipped: torch.Tensor
    """Boolean: whether this call changed any gradient."""


@runtime_checkable
class ClipPolicy(Protocol):
    """Clips gradients in place and reports the global gradient norm measured before clipping.

    Contract shared by every policy (checked by one test suite over all of them):

    * parameters whose ``.grad`` is ``None`` are skipped;
    * ``grad_norm`` is the global L2 norm of all gradients before clipping. Under DDP the
      gradients are already all-reduced when backward returns, so every rank measures the
      global norm; under fp16 call ``GradScaler.unscale_`` first so the norm is unscaled;
    * a non-finite norm changes nothing: no gradient is touched and no state is updated;
    * ``state_dict()`` holds only tensors, ints, floats, bools, strings, lists and dicts, so
      ``torch.load(..., weights_only=True)`` reads it back; stateless policies return ``{}``.
    """

    def __call__(self, parameters: Iterable[nn.Parameter]) -> ClipReport:
        """Clip the gradients of ``parameters`` in place; report the norm before clipping."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The policy's state (``{}`` for a stateless policy)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


def gradients(parameters: Iterable[nn.Parameter]) -> list[torch.Tensor]:
    """The ``.grad`` of every parameter that has one."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of ``grads`` as a 0-dim tensor (``0.0`` when there are none)."""
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)


def no_clip(norm: torch.Tensor) -> ClipReport:
    """The report of a call that left every gradient as it was."""
    return ClipReport(norm, torch.zeros((), dtype=torch.bool, device=norm.device))


def scale_(grads: list[torch.Tensor], factor: torch.Tensor) -> None:
    """Multiply every gradient in place by the 0-dim tensor ``factor``."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
    for grad in grads:
        groups[(grad.device, grad.dtype)].append(grad)
    for (device, _), group in groups.items():
        torch._foreach_mul_(group, factor.to(device))


def refuse_state(policy: object, state: Mapping[str, Any]) -> None:
    """``load_state_dict`` of a stateless policy: accept only the empty state it saved."""
    if state:
        raise ValueError(
            f"{type(policy).__name__} has no state; got a state with keys {sorted(state)}"
        )
