"""The built-in model zoo, and bringing your own model by import path.

Every model takes raw feature rows ``(batch, num_features)`` float32 and returns logits
``(batch, num_classes)``. Standardisation (train-split mean and std) is a buffer inside the
model, so the exported ONNX file takes raw features too. Each model exposes ``blocks``
(an ``nn.ModuleList``) for activation checkpointing and names its classifier ``head``.

Your own model: ``ModelSpec(name="mypackage.models:build")`` where ``build(num_features,
num_classes, **options) -> nn.Module`` follows the same conventions (``blocks`` optional).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from train_loops.data_quality import outlier_rows

BUILTIN_MODELS = ("mlp", "cnn", "transformer", "rnn")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build.

    Attributes:
        name: ``"mlp"``, ``"cnn"``, ``"transformer"``, ``"rnn"`` or
            ``"package.module:factory"``.
        options: keyword arguments for the builder (e.g. ``hidden=128, depth=4``).
    """

    name: str = "mlp"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in BUILTIN_MODELS and ":" not in self.name:
            raise ValueError(
                f"model name must be one of {BUILTIN_MODELS} or 'package.module:factory', "
                f"got {self.name!r}"
            )


class Standardize(nn.Module):
    """``(x - mean) / std`` with the statistics stored as buffers (exported with the model)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def fit(self, features: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(features.mean(axis=0)))
        self.std.copy_(torch.as_tensor(np.maximum(features.std(axis=0), 1e-6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.fc2(torch.relu(self.fc1(self.norm(x)))))


class MLP(nn.Module):
    """Tabular rows: standardise → linear stem → ``depth`` residual blocks → ``head``."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        hidden: int = 128,
        depth: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.standardize = Standardize(num_features)
        self.stem = nn.Linear(num_features, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.standardize(x))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class ConvBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(1, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))


class SmallCNN(nn.Module):
    """Square single-channel images flattened into rows (digits: 64 features = 8×8)."""

    def __init__(
        self, num_features: int, num_classes: int, channels: int = 32, depth: int = 4
    ) -> None:
        super().__init__()
        side = math.isqrt(num_features)
        if side * side != num_features:
            raise ValueError(f"cnn needs a square image; {num_features} features is not one")
        self.side = side
        self.standardize = Standardize(num_features)
        self.stem = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(ConvBlock(channels) for _ in range(depth))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x).reshape(-1, 1, self.side, self.side)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


class SmallTransformer(nn.Module):
    """Rows read as a sequence of ``tokens`` tokens of ``num_features / tokens`` values each.

    ``norm_first=True`` (pre-LN, the default) normalises each sub-layer's input and trains
    smoothly; ``False`` is the original post-LN layout, which needs learning-rate warm-up at
    depth (Xiong et al. 2020) and is what the ``stress`` study searches over."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        tokens: int = 8,
        width: int = 64,
        depth: int = 4,
        heads: int = 4,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        if num_features % tokens:
            raise ValueError(
                f"transformer: {num_features} features do not split into {tokens} tokens"
            )
        self.tokens = tokens
        self.standardize = Standardize(num_features)
        self.embed = nn.Linear(num_features // tokens, width)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                dim_feedforward=2 * width,
                dropout=0.0,
                batch_first=True,
                norm_first=norm_first,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x).reshape(x.shape[0], self.tokens, -1)
        x = self.embed(x) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


class RecurrentBlock(nn.Module):
    """One Elman RNN layer over the whole sequence, no normalisation and no residual path."""

    def __init__(self, width: int, nonlinearity: str) -> None:
        super().__init__()
        self.rnn = nn.RNN(width, width, nonlinearity=nonlinearity, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class DeepRNN(nn.Module):
    """Rows read as ``tokens`` tokens; ``depth`` stacked Elman RNN layers without
    normalisation; the last step's state is classified.

    The textbook case of exploding gradients (Pascanu et al. 2013): backpropagation through
    ``tokens`` steps and ``depth`` layers multiplies by the recurrent Jacobians, so a learning
    rate a little too high turns into spikes that only clipping holds. ``recurrent_scale``
    multiplies PyTorch's default recurrent initialisation (larger: closer to the edge)."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        tokens: int = 16,
        width: int = 32,
        depth: int = 2,
        nonlinearity: str = "tanh",
        recurrent_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_features % tokens:
            raise ValueError(f"rnn: {num_features} features do not split into {tokens} tokens")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.tokens = tokens
        self.standardize = Standardize(num_features)
        self.embed = nn.Linear(num_features // tokens, width)
        self.blocks = nn.ModuleList(RecurrentBlock(width, nonlinearity) for _ in range(depth))
        with torch.no_grad():
            for block in self.blocks:
                block.rnn.weight_hh_l0.mul_(recurrent_scale)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.standardize(x).reshape(x.shape[0], self.tokens, -1))
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, -1])


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "transformer": SmallTransformer,
    "rnn": DeepRNN,
}


def build_model(spec: ModelSpec, num_features: int, num_classes: int) -> nn.Module:
    """Build the model ``spec`` names for ``num_features`` inputs and ``num_classes`` outputs."""
    if spec.name in _BUILDERS:
        builder = _BUILDERS[spec.name]
    else:
        module_name, _, attribute = spec.name.partition(":")
        try:
            builder = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot import model factory {spec.name!r}: {error}") from error
    try:
        return builder(num_features, num_classes, **spec.options)
    except TypeError as error:
        raise ValueError(f"model {spec.name!r}: bad options {spec.options}: {error}") from error


def fit_standardization(model: nn.Module, features: np.ndarray) -> None:
    """Set every :class:`Standardize` layer of ``model`` from the training features, leaving
    out the rows :func:`~train_loops.data_quality.outlier_rows` flags: a corrupt block must not
    set the scale every clean row is divided by."""
    inliers = features[~outlier_rows(features)]
    for module in model.modules():
        if isinstance(module, Standardize):
            module.fit(inliers)
