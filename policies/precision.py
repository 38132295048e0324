"""Numeric precision of the training step: fp32, bf16 or fp16, behind one code path.

The step reads the same whatever the precision (as in nanoGPT's ``train.py``)::

    with precision.autocast():
        loss = loss_fn(model(x), y)
    precision.backward(loss)        # scaled backward under fp16
    precision.unscale_(optimizer)   # before clipping, so the clip sees true gradients
    clip(model.parameters())
    stepped = precision.step(optimizer)   # False when fp16 found inf/NaN and skipped it
    optimizer.zero_grad(set_to_none=True)

For fp32 and bf16 the ``GradScaler`` is disabled, and a disabled scaler is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""Every precision name, mapped to the dtype autocast computes in."""

_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


def check_supported(name: str, device: torch.device) -> None:
    """Raise ``ValueError`` unless ``device`` can train in precision ``name``.

    fp32 runs anywhere. bf16 and fp16 need autocast, used here on CPU and CUDA; bf16 on CUDA
    also needs hardware support (``torch.cuda.is_bf16_supported()``). There is never a silent
    fallback to fp32: a run asked to measure bf16 must not report fp32 numbers.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; expected one of {list(PRECISIONS)}")
    if name == "fp32":
        return
    if device.type not in _AUTOCAST_DEVICE_TYPES:
        raise ValueError(
            f"precision {name!r} is supported on {list(_AUTOCAST_DEVICE_TYPES)} devices, "
            f"not on {device}"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"precision {name!r} asked for {device}, but CUDA is not available")
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)} "
                f"({device}); use 'fp16' or 'fp32'"
            )


class PrecisionPolicy:
    """Autocast plus, for fp16, a ``GradScaler`` with a dynamic loss scale.

    Build it with :func:`build_precision`. fp16 gradients that overflow make :meth:`step`
    skip the optimizer update and halve the loss scale; :attr:`skipped_steps` counts those.
    """

    def __init__(self, name: str, device: torch.device | str) -> None:
        device = torch.device(device)
        check_supported(name, device)
        self.name = name
        """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        self.device = device
        self.dtype = PRECISIONS[name]
        """The dtype autocast computes in (``torch.float32`` for fp32: no autocast)."""
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")
        self._skipped_steps = 0

    def __repr__(self) -> str:
        return f"PrecisionPolicy(name={self.name!r}, device={str(self.device)!r})"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass and loss: autocast to :attr:`dtype`, or nothing (fp32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of ``loss``, multiplied by the loss scale under fp16."""
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale in place (fp16), so clipping sees true norms."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step and loss-scale update; ``False`` when fp16 skipped the step because
        the gradients held inf or NaN (always ``True`` for fp32 and bf16)."""
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # The scaler lowers the scale exactly when it found inf/NaN and skipped the step.
        stepped = self.scaler.get_scale() >= scale_before
        if not stepped:
            self._skipped_steps += 1
        return stepped

    @property
    def scales_loss(self) -> bool:
        """Whether a dynamic loss scaler is active (fp16): it then skips overflowing steps
        itself, so the step must not refuse non-finite gradients before it does."""
        return self.scaler.is_enabled()

    @property
    def loss_scale(self) -> float:
        """Current loss scale (1.0 when there is no scaler)."""
        return float(self.scaler.get_scale())

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped so far because fp16 gradients overflowed."""
        return self._skipped_steps

    def state_dict(self) -> dict[str, Any]:
        """The precision name, the scaler's state (``{}`` when disabled) and the skipped count."""
        return {
            "name": self.name,
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self._skipped_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a state saved under another precision."""
        expected = {"name", "scaler", "skipped_steps"}
        if set(state) != expected:
            raise ValueError(
                f"precision state must have keys {sorted(expected)}, got {sorted(state)}"
            )
        if state["name"] != self.name:
            raise ValueError(
                f"precision state was saved for {state['name']!r}, cannot load into {self.name!r}"
            )
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(dict(state["scaler"]))
        self._skipped_steps = int(state["skipped_steps"])


def build_precision(name: str, device: torch.device | str) -> PrecisionPolicy:
    """The precision policy ``name`` (``"fp32"``, ``"bf16"`` or ``"fp16"``) on ``device``.

    Raises ``ValueError`` for an unknown name or a precision ``device`` cannot run.

    >>> precision = build_precision("bf16", torch.device("cpu"))
    >>> precision.loss_scale
    1.0
    """
    return PrecisionPolicy(name, device)
