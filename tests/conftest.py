"""Shared fixtures. Ray-backed tests share ONE local Ray for the whole session (`ray_session`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """The embedded digits set, prepared once per test session."""
    from train_loops.data import DataSpec, prepare_dataset

    return prepare_dataset(DataSpec(), tmp_path_factory.mktemp("data") / "digits")


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray for every Ray-backed test (starting Ray costs 5-7 s here), started with
    Serve's default ingress of `trimtab serve` (serving.ingress: HAProxy)."""
    import ray

    from serving.ingress import DEFAULT_INGRESS, apply_ingress_environment

    if not ray.is_initialized():
        apply_ingress_environment(DEFAULT_INGRESS, tmp_path_factory.mktemp("ingress"))
        ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def storage(tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path
