"""train_loops on real Ray Train: 2-worker DDP accuracy, and a worker killed mid-run.

Ray Train V2's ``fit()`` raises the run's error itself (``TrainingFailedError``), so a test that
gets a ``Result`` back has a run that ended well; ``result.error`` is always ``None`` there.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import psutil
import pytest
import torch

from train_loops.checkpoint import load_checkpoint, load_model_for_export
from train_loops.config import TrainConfig
from train_loops.loop import REPORTED_METRICS

pytestmark = pytest.mark.slow


def _test_accuracy(checkpoint_path) -> float:
    model, dataset, _, _ = load_model_for_export(checkpoint_path)
    x, y = dataset.load("test")
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(1)
    return float((predictions == torch.from_numpy(y)).float().mean())


def test_two_worker_ddp_reaches_95_percent_with_complete_reports(ray_session, digits, storage):
    from train_loops.trainer import build_trainer

    config = TrainConfig(
        dataset_dir=str(digits.root),
        num_workers=2,
        epochs=6,
        global_batch_size=64,
        clipping={"method": "norm", "max_norm": 2.0},
        report_every_steps=20,
        checkpoint_every_steps=40,
    )
    result = build_trainer(config, storage_path=storage, name="ddp").fit()
    history = result.metrics_dataframe
    assert len(history) >= 2  # V2 keeps the reports that carried a checkpoint
    for key in REPORTED_METRICS:
        assert key in history.columns, key
        assert history[key].map(math.isfinite).all(), key
    assert result.metrics["step"] == result.metrics["steps_planned"]
    assert result.metrics["device_seconds"] == pytest.approx(2 * result.metrics["wall_seconds"])
    assert _test_accuracy(result.checkpoint.path) >= 0.95


def _train_worker_pids() -> list[int]:
    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "RayTrainWorker" in command:
            pids.append(process.info["pid"])
    return pids


def _registered_steps(run_dir) -> list[float]:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return sorted(r["metrics"]["step"] for r in results)


def _complete_checkpoint_steps(run_dir) -> list[int]:
    """Steps of the checkpoints on disk that load. One that is still being copied into the
    run directory does not (a torn ``state.pt``); it is not registered either (Ray registers a
    checkpoint after its upload), so it cannot be a resume point."""
    steps = []
    for directory in run_dir.glob("checkpoint_*"):
        try:
            steps.append(load_checkpoint(directory)["step"])
        except (OSError, RuntimeError, EOFError):
            continue
    return steps


def test_killed_worker_resumes_from_the_latest_registered_checkpoint(ray_session, digits, storage):
    from train_loops.trainer import build_trainer

    config = TrainConfig(
        dataset_dir=str(digits.root),
        num_workers=2,
        epochs=12,
        global_batch_size=64,
        clipping={"method": "zclip", "warmup_steps": 5},
        report_every_steps=10,
        checkpoint_every_steps=10,
        max_failures=1,
    )
    trainer = build_trainer(config, storage_path=storage, name="killed")
    outcome = {}
    fit = threading.Thread(target=lambda: outcome.setdefault("result", trainer.fit()))
    fit.start()
    run_dir = storage / "killed"
    deadline = time.monotonic() + 240
    # Wait until the controller has *registered* two checkpoints (it writes them to its
    # snapshot; files on disk alone are not enough: registration is asynchronous), then kill.
    registered: list[float] = []
    while time.monotonic() < deadline and not (len(registered) >= 2 and _train_worker_pids()):
        registered = _registered_steps(run_dir)
        time.sleep(0.1)
    assert len(registered) >= 2, "training never registered two checkpoints"
    on_disk = max(_complete_checkpoint_steps(run_dir))
    victim = _train_worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    fit.join(timeout=400)
    assert not fit.is_alive()
    result = outcome["result"]
    final = result.metrics
    assert final["step"] == final["steps_planned"]
    resumed_from = final["resumed_from_step"]
    # Resumed from the latest registered checkpoint at the kill (one registered in the
    # instant between our read and the kill is the only way to be later), never from scratch.
    assert max(registered) <= resumed_from <= on_disk
    print(
        f"\nkill: registered checkpoints at steps {registered}, newest on disk at {on_disk}; "
        f"resumed from {resumed_from:.0f}: {on_disk - resumed_from:.0f} steps redone"
    )
    assert _test_accuracy(result.checkpoint.path) >= 0.9


def test_two_workers_rewind_together_on_one_ranks_corrupt_block(ray_session, digits, storage):
    """Only rank 1's stream carries the corrupt block; the spike verdict is agreed, so both
    ranks rewind and skip together, and end with bit-identical weights."""
    import functools

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from tests.corrupt_data import CorruptBlock, RankStates
    from train_loops.worker import train_worker

    states = storage / "rank-states"
    states.mkdir()
    config = TrainConfig(
        dataset_dir=str(digits.root),
        num_workers=2,
        epochs=4,
        global_batch_size=64,
        report_every_steps=19,
        checkpoint_every_steps=38,
        recovery={"policy": "rewind", "every": 10},
    )
    block = CorruptBlock(fault="labels", epoch=2, first_batch=4, batches=5, ranks=(1,))
    trainer = TorchTrainer(
        functools.partial(train_worker, wrap_batches=block, on_checkpoint=RankStates(str(states))),
        train_loop_config=config.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="rewind-ddp", storage_path=str(storage)),
        torch_config=TorchConfig(backend="gloo"),
    )
    result = trainer.fit()
    final = result.metrics
    print(
        f"\n2 workers, corrupt block on rank 1: {final['rewinds']:.0f} rewinds, "
        f"{final['skipped_batches']:.0f} batches left out, val accuracy {final['val_accuracy']:.3f}"
    )
    assert final["rewinds"] >= 1 and final["step"] == final["steps_planned"]
    assert final["val_accuracy"] >= 0.95
    last = int(final["step"])
    rank0 = torch.load(states / f"rank0-step{last}.pt", weights_only=True)
    rank1 = torch.load(states / f"rank1-step{last}.pt", weights_only=True)
    assert rank0["recovery"] == rank1["recovery"]
    for name, tensor in rank0["model"].items():
        assert torch.equal(rank1["model"][name], tensor), name
