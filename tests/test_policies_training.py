"""A small model trained on CPU with every clipping method x every precision, through the same
step the training loop runs; and an unstable setting that only clipping keeps from diverging."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import policies
from policies import (
    CLIP_METHODS,
    PRECISIONS,
    StabilityConfig,
    StabilityDetector,
    StabilityReport,
    build_clip_policy,
    build_precision,
)
from train_loops.loop import train_step

CLIP_CONFIGS = {
    "none": {"method": "none"},
    "norm": {"method": "norm", "max_norm": 1.0},
    "value": {"method": "value", "clip_value": 0.1},
    "agc": {"method": "agc"},
    "autoclip": {"method": "autoclip", "percentile": 10.0},
    "zclip": {"method": "zclip", "warmup_steps": 10},
}


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


class SmallClassifier(nn.Module):
    """Stem, residual blocks and a ``head``, like the model zoo's classifiers."""

    def __init__(self, inputs: int = 16, width: int = 32, depth: int = 2, classes: int = 4):
        super().__init__()
        self.stem = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def teacher_data(samples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs labelled by a random linear teacher: learnable, and the same every run."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 16, generator=generator)
    return x, (x @ torch.randn(16, 4, generator=generator)).argmax(dim=1)


def train(
    clip_config: dict,
    precision_name: str,
    *,
    optimizer: str = "adam",
    lr: float = 1e-2,
    steps: int = 40,
) -> tuple[list[float], StabilityReport]:
    """The training loop's own step (``train_loops.loop.train_step``), fed to the detector as
    the loop feeds it; stops early once the detector sees divergence."""
    torch.manual_seed(0)
    model = SmallClassifier()
    clip = build_clip_policy(clip_config, model)
    precision = build_precision(precision_name, torch.device("cpu"))
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    detector = StabilityDetector(StabilityConfig())
    x, y = teacher_data()
    losses = []
    for step in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        outcome = train_step(model, x[batch], y[batch], opt, precision, clip)
        detector.update(
            loss=outcome.loss.item(),
            grad_norm=outcome.grad_norm.item(),
            clipped=bool(outcome.clipped),
            skipped=not outcome.stepped,
            scaler_overflow=outcome.scaler_overflow,
            loss_scale=precision.loss_scale,
        )
        losses.append(outcome.loss.item())
        if detector.diverged:
            break
    return losses, detector.report()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second thread only adds contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_clipping_method_is_trained() -> None:
    assert set(CLIP_CONFIGS) == set(CLIP_METHODS)


@pytest.mark.parametrize("precision_name", sorted(PRECISIONS))
@pytest.mark.parametrize("method", sorted(CLIP_CONFIGS))
def test_every_clip_and_precision_lowers_the_loss(method: str, precision_name: str) -> None:
    losses, report = train(CLIP_CONFIGS[method], precision_name)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert not report.diverged
    assert report.instability_score < 0.5
    assert all(math.isfinite(value) for value in report.as_metrics().values())
    if method in ("norm", "value", "agc", "autoclip"):
        assert report.clipped_steps > 0  # the setting was exercised, not a no-op


def test_high_learning_rate_diverges_without_clipping_but_not_with_it() -> None:
    unstable = {"optimizer": "sgd", "lr": 3.0, "steps": 60}
    losses, report = train({"method": "none"}, "fp32", **unstable)
    assert report.diverged and report.instability_score == 1.0
    assert len(losses) < 60  # the detector stopped the run early

    losses, report = train({"method": "norm", "max_norm": 1.0}, "fp32", **unstable)
    assert not report.diverged and report.instability_score < 1.0
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < losses[0]


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def test_policies_never_import_ray() -> None:
    for path in Path(policies.__file__).parent.rglob("*.py"):
        assert "ray" not in imported_modules(path), path


@pytest.mark.parametrize(
    "module",
    ["clipping", "precision", "activation_checkpointing", "stability", "_validation"],
)
def test_policy_modules_read_no_files_and_speak_no_http(module: str) -> None:
    package = Path(policies.__file__).parent
    paths = list((package / module).rglob("*.py")) or [package / f"{module}.py"]
    for path in paths:
        assert not imported_modules(path) & {"http", "httpx", "fastapi", "urllib", "socket"}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("open", "print"), (path, node.lineno)
