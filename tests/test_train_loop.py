"""train_loops without Ray: the step, telemetry, exact resume, divergence, batches, checkpoints,
spike recovery on a corrupt block of rows."""

from __future__ import annotations

import io
import math
import shutil

import pytest
import torch

from tests.corrupt_data import CorruptBlock
from train_loops.batches import ArrowShardBatches
from train_loops.checkpoint import load_checkpoint, load_model_for_export
from train_loops.config import TrainConfig
from train_loops.loop import REPORTED_METRICS, StepOutcome, WorkerContext, read_step_values, train
from train_loops.models import ModelSpec
from train_loops.worker import arrow_batches, train_in_process


def run(config, resume_from=None, keep=None):
    """Run in-process; return (reports, final metrics). Copies checkpoints into ``keep``."""
    reports = []

    def report(metrics, directory):
        reports.append(metrics)
        if directory is not None and keep is not None:
            shutil.copytree(directory, keep / f"step-{int(metrics['step'])}")

    final = train_in_process(config, report, resume_from=resume_from)
    return reports, final


def test_reports_carry_every_metric_finite(digits):
    config = TrainConfig(
        dataset_dir=str(digits.root), epochs=2, clipping={"method": "zclip"}, report_every_steps=10
    )
    reports, final = run(config)
    assert len(reports) >= 3
    for metrics in reports:
        assert set(REPORTED_METRICS) <= set(metrics)
        assert all(math.isfinite(v) for v in metrics.values())
    assert final["val_accuracy"] > 0.9
    assert reports[-1]["step"] == reports[-1]["steps_planned"]
    assert final["activation_bytes"] > 0 and final["peak_memory_mb"] > 0
    assert final["cost_dollars"] == pytest.approx(final["wall_seconds"] / 3600 * 0.10)


@pytest.mark.parametrize(
    "clipping",
    [{"method": "autoclip", "percentile": 10.0}, {"method": "zclip", "warmup_steps": 5}],
)
def test_resume_from_a_checkpoint_ends_with_the_same_weights(digits, tmp_path, clipping):
    config = TrainConfig(
        dataset_dir=str(digits.root),
        epochs=2,
        clipping=clipping,
        precision="fp16",
        report_every_steps=10,
        checkpoint_every_steps=10,
        model=ModelSpec("mlp", {"dropout": 0.1}),
    )
    keep = tmp_path / "checkpoints"
    run(config, keep=keep)
    checkpoints = sorted(keep.iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) >= 4
    uninterrupted = load_checkpoint(checkpoints[-1])
    # stop after the 2nd checkpoint (mid-epoch), resume from it
    middle = checkpoints[1]
    assert load_checkpoint(middle)["batch_in_epoch"] > 0
    resumed_keep = tmp_path / "resumed"
    reports, _ = run(config, resume_from=middle, keep=resumed_keep)
    assert reports[0]["step"] > load_checkpoint(middle)["step"]
    resumed = load_checkpoint(sorted(resumed_keep.iterdir(), key=lambda p: int(p.name[5:]))[-1])
    assert resumed["step"] == uninterrupted["step"]
    for name, tensor in uninterrupted["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=1e-5, atol=1e-6)
    assert resumed["clipping"].keys() == uninterrupted["clipping"].keys()
    assert resumed["stability"]["steps"] == uninterrupted["stability"]["steps"]


def test_unstable_setting_stops_early_with_finite_penalties(digits):
    config = TrainConfig(
        dataset_dir=str(digits.root),
        epochs=3,
        learning_rate=50.0,
        warmup_steps=1,
        precision="fp16",
        clipping={"method": "none"},
    )
    reports, final = run(config)
    assert final["diverged"] == 1.0 and final["instability_score"] == 1.0
    assert final["step"] < final["steps_planned"]
    assert all(math.isfinite(v) for m in reports for v in m.values())


def test_checkpoint_rebuilds_the_trained_model_for_export(digits, tmp_path):
    config = TrainConfig(dataset_dir=str(digits.root), epochs=1)
    keep = tmp_path / "ckpt"
    run(config, keep=keep)
    last = sorted(keep.iterdir(), key=lambda p: int(p.name[5:]))[-1]
    model, dataset, training_config, lineage = load_model_for_export(last)
    assert not model.training and dataset.num_classes == 10
    assert training_config["dataset_dir"] == str(digits.root)
    x, y = dataset.load("test")
    accuracy = (model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).float().mean()
    assert accuracy > 0.85
    assert lineage["step"] == load_checkpoint(last)["step"]


def test_global_batch_is_split_across_workers_with_equal_counts(digits):
    shards = [
        ArrowShardBatches(
            str(digits.split_path("train")),
            digits.feature_names,
            "label",
            rank=rank,
            world_size=2,
            batch_size=32,
            seed=3,
            device=torch.device("cpu"),
        )
        for rank in (0, 1)
    ]
    single = ArrowShardBatches(
        str(digits.split_path("train")),
        digits.feature_names,
        "label",
        rank=0,
        world_size=1,
        batch_size=64,
        seed=3,
        device=torch.device("cpu"),
    )
    assert shards[0].batches_per_epoch == shards[1].batches_per_epoch == single.batches_per_epoch
    first = [next(iter(shard.epoch(0)))[1] for shard in shards]
    assert all(len(labels) == 32 for labels in first)
    # disjoint rows across ranks; the same rows again for the same (seed, epoch); skip works
    rows0 = {tuple(row) for x, _ in shards[0].epoch(0) for row in x.tolist()}
    rows1 = {tuple(row) for x, _ in shards[1].epoch(0) for row in x.tolist()}
    assert len(rows0 & rows1) <= 5  # digits has a few duplicate images
    again = list(shards[0].epoch(0, skip=2))
    torch.testing.assert_close(again[0][0], list(shards[0].epoch(0))[2][0])


def test_config_refuses_unknown_keys_and_bad_values(digits):
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"dataset_dir": "x", "learning_rte": 1})
    with pytest.raises(ValueError, match="not divisible"):
        TrainConfig(dataset_dir="x", global_batch_size=63, num_workers=2)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(dataset_dir="x", precision="fp8")
    config = TrainConfig(dataset_dir=str(digits.root), model=ModelSpec("cnn", {"depth": 2}))
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_step_values_reach_the_host_exactly(device):
    outcome = StepOutcome(
        loss=torch.tensor(2.302585, device=device),
        grad_norm=torch.tensor(float("inf"), device=device),
        clipped=torch.tensor(True, device=device),
        stepped=True,
        correct=torch.tensor(63, device=device),
    )
    loss, grad_norm, clipped, correct = read_step_values(outcome.loss, outcome)
    assert loss == pytest.approx(2.302585)
    assert grad_norm == math.inf  # a non-finite norm must reach the detector as such
    assert clipped > 0
    assert correct == 63 and int(correct) == 63


def run_with_fault(config, block=None, resume=None):
    """Run the loop in-process on the config's data with ``block`` (a
    :class:`tests.corrupt_data.CorruptBlock`) corrupting the stream; returns (checkpoint
    states, final metrics). States pass through a weights_only save/load like real ones."""
    context = WorkerContext()
    source = arrow_batches(config, context)
    states = []

    def report(metrics, state):
        if state is not None:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            buffer.seek(0)
            states.append(torch.load(buffer, weights_only=True))

    final = train(
        config,
        batches=block(source, context) if block is not None else source,
        batches_per_epoch=source.batches_per_epoch,
        report=report,
        resume=resume,
        context=context,
    )
    return states, final


# 5 consecutive batches (320 rows) of epoch 2 arrive with scrambled labels.
LABEL_BLOCK = CorruptBlock(fault="labels", epoch=2, first_batch=4, batches=5)


def test_rewind_recovers_from_a_corrupt_block_that_wrecks_an_unprotected_run(digits):
    config = TrainConfig(dataset_dir=str(digits.root), epochs=4, report_every_steps=10)
    _, clean = run_with_fault(config)
    _, unprotected = run_with_fault(config, LABEL_BLOCK)
    rewind = config.replace(recovery={"policy": "rewind", "every": 10})
    _, recovered = run_with_fault(rewind, LABEL_BLOCK)
    print(
        f"\nval accuracy clean {clean['val_accuracy']:.3f}, none {unprotected['val_accuracy']:.3f}"
        f" ({unprotected['loss_spikes']:.0f} loss spikes, instability "
        f"{unprotected['instability_score']:.2f}), rewind {recovered['val_accuracy']:.3f} "
        f"({recovered['rewinds']:.0f} rewinds, {recovered['skipped_batches']:.0f} batches left "
        f"out, instability {recovered['instability_score']:.2f})"
    )
    assert clean["loss_spikes"] == 0 and clean["rewinds"] == 0
    # none: the block goes into the weights; it spikes badly and the model is worse for it
    assert unprotected["loss_spikes"] >= 3 and unprotected["instability_score"] > 0.5
    assert unprotected["val_accuracy"] < clean["val_accuracy"] - 0.02
    # rewind: back to the snapshot before the block, its batches left out
    assert recovered["rewinds"] >= 1 and recovered["skipped_batches"] >= LABEL_BLOCK.batches
    assert recovered["steps_lost"] >= 1 and recovered["loss_spikes"] == 0
    assert recovered["step"] == recovered["steps_planned"] and recovered["diverged"] == 0
    assert recovered["val_accuracy"] >= clean["val_accuracy"] - 0.02
    # a recovered spike is scored, but less than the same spikes absorbed
    assert 0 < recovered["instability_score"] < unprotected["instability_score"]
    # every batch computed is charged, the ones thrown away too
    assert recovered["device_seconds"] > 0


def test_skip_leaves_the_corrupt_batches_out(digits):
    config = TrainConfig(
        dataset_dir=str(digits.root), epochs=4, report_every_steps=10, recovery={"policy": "skip"}
    )
    _, final = run_with_fault(config, LABEL_BLOCK)
    assert final["skipped_batches"] == LABEL_BLOCK.batches and final["rewinds"] == 0
    assert final["recovered_spikes"] == LABEL_BLOCK.batches and final["loss_spikes"] == 0
    assert final["step"] == final["steps_planned"] and final["val_accuracy"] > 0.95


def test_recovery_gives_up_on_a_run_that_never_comes_back(digits):
    # every batch from epoch 2 on is corrupt: there is no good batch to come back to
    block = CorruptBlock(fault="labels", epoch=2, first_batch=4, batches=100)
    config = TrainConfig(
        dataset_dir=str(digits.root),
        epochs=4,
        recovery={"policy": "rewind", "every": 10, "max_in_a_row": 4},
    )
    _, final = run_with_fault(config, block)
    assert final["diverged"] == 1.0 and final["instability_score"] == 1.0
    assert final["step"] < final["steps_planned"]
    assert all(math.isfinite(v) for v in final.values())


def test_resume_from_a_checkpoint_taken_after_a_rewind_is_bit_exact(digits):
    config = TrainConfig(
        dataset_dir=str(digits.root),
        epochs=4,
        report_every_steps=5,
        checkpoint_every_steps=5,
        recovery={"policy": "rewind", "every": 10, "lr_factor": 0.5, "lr_steps": 8},
        model=ModelSpec("mlp", {"dropout": 0.1}),  # the RNG state matters too
    )
    states, _ = run_with_fault(config, LABEL_BLOCK)
    uninterrupted = states[-1]
    assert uninterrupted["recovery"]["rewinds"] >= 1
    after_rewind = next(
        s for s in states if s["recovery"]["rewinds"] >= 1 and s is not uninterrupted
    )
    resumed_states, resumed_final = run_with_fault(config, LABEL_BLOCK, resume=after_rewind)
    resumed = resumed_states[-1]
    assert resumed["step"] == uninterrupted["step"] and resumed_final["resumed_from_step"] > 0
    assert resumed["recovery"]["skipped_batches"] == uninterrupted["recovery"]["skipped_batches"]
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    for index, state in uninterrupted["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][index][key], value), (index, key)
    assert resumed["stability"] == uninterrupted["stability"]
