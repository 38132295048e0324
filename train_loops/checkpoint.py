"""Checkpoint files: everything needed to continue a run exactly, loaded with ``weights_only``.

A checkpoint directory holds ``state.pt`` (model, optimizer, LR schedule, loss scaler, clipping
and stability state, RNG states, counters) and ``train_config.json`` (the run's configuration,
enough to rebuild the model for export).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from train_loops.config import TrainConfig
from train_loops.data import PreparedDataset
from train_loops.models import build_model

STATE_FILE = "state.pt"
CONFIG_FILE = "train_config.json"


def save_checkpoint(directory: Path | str, state: dict[str, Any], config: TrainConfig) -> Path:
    """Write ``state`` and ``config`` into ``directory`` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    return directory


def load_checkpoint(directory: Path | str) -> dict[str, Any]:
    """Load ``state.pt`` with ``weights_only=True``: no pickled code runs."""
    return torch.load(Path(directory) / STATE_FILE, weights_only=True, map_location="cpu")


def load_config(directory: Path | str) -> TrainConfig:
    return TrainConfig.from_dict(json.loads((Path(directory) / CONFIG_FILE).read_text()))


def load_model_for_export(
    directory: Path | str,
) -> tuple[nn.Module, PreparedDataset, dict[str, Any], dict[str, Any]]:
    """Rebuild the trained model from a checkpoint, in eval mode on CPU.

    Returns ``(model, prepared_dataset, training_config_dict, lineage)``.
    """
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"{directory}: not a trimtab checkpoint (no {STATE_FILE})")
    config = load_config(directory)
    dataset = PreparedDataset.open(config.dataset_dir)
    model = build_model(config.model, dataset.num_features, dataset.num_classes)
    state = load_checkpoint(directory)
    model.load_state_dict(state["model"])
    lineage = {"checkpoint": str(directory.resolve()), "step": int(state["step"])}
    return model.eval(), dataset, config.to_dict(), lineage


def rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states as weights_only-loadable values."""
    _kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
