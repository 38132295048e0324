"""The objectives a study searches, measured on real short runs (no Ray): the stability score
separates learning rates, cost is calibrated and deterministic, memory moves with activation
checkpointing, the probe and the calibration re-run exactly when what they depend on changes."""

from __future__ import annotations

import json

import pytest

from search.cost_calibration import (
    FILE_NAME,
    charged,
    cost_key,
    load_or_calibrate,
    slow_precision_warnings,
)
from search.optuna_wiring import constraint_names, constraint_values
from search.probe import load_or_probe
from search.spec import ModelSection, StudySpec
from train_loops.config import TrainConfig
from train_loops.models import ModelSpec
from train_loops.worker import train_in_process


def run(config: TrainConfig) -> dict[str, float]:
    return train_in_process(config, lambda metrics, directory: None)


def digits_config(digits, **changes) -> TrainConfig:
    values = {
        "dataset_dir": str(digits.root),
        "epochs": 4,
        "report_every_steps": 20,
        "target_val_accuracy": 0.8,
        **changes,
    }
    return TrainConfig(**values)


def test_learning_rates_get_visibly_different_scores_and_too_low_is_infeasible(digits):
    spec = StudySpec()  # default constraints: accuracy floor 0.8, stalled runs infeasible
    too_low = run(digits_config(digits, learning_rate=1e-6))
    good = run(digits_config(digits, learning_rate=3e-3))
    too_high = run(digits_config(digits, learning_rate=0.3, warmup_steps=0))

    assert good["instability_score"] == 0.0 and not good["stalled"]
    assert too_low["stalled"] == 1.0 and too_low["loss_reduction"] < 0.1
    assert too_low["instability_score"] >= 0.5
    assert too_high["diverged"] == 1.0 and too_high["instability_score"] == 1.0
    assert good["loss_reduction"] > 0.8

    names = constraint_names(spec)
    assert names[:2] == ["not_diverged", "not_stalled"]
    assert all(value <= 0 for value in constraint_values(spec, good))
    low_values = dict(zip(names, constraint_values(spec, too_low), strict=True))
    assert low_values["not_stalled"] > 0  # infeasible because it learned nothing


def test_stalled_constraint_can_be_relaxed():
    spec = StudySpec(constraints={"allow_stalled": True})
    assert "not_stalled" not in constraint_names(spec)


def test_calibrated_cost_is_steps_times_step_cost(digits):
    config = digits_config(digits, step_cost_seconds=0.01, price_per_worker_hour=3.6)
    first, second = run(config), run(config)
    assert first["cost_dollars"] == second["cost_dollars"]
    assert first["device_seconds"] == pytest.approx(first["step"] * 0.01)
    assert first["cost_dollars"] == pytest.approx(first["step"] * 0.01 * 3.6 / 3600)
    # cost to target: the steps until the accuracy floor was first reached, at a report
    assert 0 < first["steps_to_target"] <= first["step"]
    assert first["steps_to_target"] % 20 == 0 or first["steps_to_target"] == first["step"]
    assert first["cost_to_target_dollars"] == pytest.approx(
        first["steps_to_target"] * 0.01 * 3.6 / 3600
    )
    # wall clock stays, as telemetry
    assert first["wall_cost_dollars"] > 0 and first["wall_seconds"] > 0


def test_target_never_reached_is_charged_the_whole_run(digits):
    metrics = run(digits_config(digits, learning_rate=1e-6, step_cost_seconds=0.01))
    assert metrics["steps_to_target"] == metrics["steps_planned"]


def test_activation_checkpointing_lowers_reported_memory_on_cpu(digits):
    model = ModelSpec("mlp", {"hidden": 256, "depth": 4})
    plain = run(digits_config(digits, model=model, max_steps=5))
    checkpointed = run(digits_config(digits, model=model, max_steps=5, activation_checkpointing=1))
    assert checkpointed["activation_bytes"] < plain["activation_bytes"]
    assert checkpointed["peak_memory_mb"] < plain["peak_memory_mb"]
    # deterministic: the same setting reports the same memory
    again = run(digits_config(digits, model=model, max_steps=5))
    assert again["peak_memory_mb"] == plain["peak_memory_mb"]


def test_run_ends_with_its_final_report_when_epochs_run_out_before_max_steps(digits):
    reports = []
    config = digits_config(digits, epochs=1, max_steps=10_000, report_every_steps=7)
    train_in_process(config, lambda metrics, directory: reports.append((metrics, directory)))
    metrics, directory = reports[-1]
    assert metrics["step"] == metrics["steps_planned"] < 10_000
    assert directory is not None  # the final report carries the checkpoint


def small_spec(tmp_path, **space) -> StudySpec:
    return StudySpec(
        name="objectives",
        storage=str(tmp_path),
        search={
            "space": {"precision": ["fp32", "bf16"], "activation_checkpointing": [0], **space},
            "probe": {"steps": 8},
        },
    )


def test_calibration_is_cached_and_redone_when_the_model_changes(digits, tmp_path):
    spec = small_spec(tmp_path, optimizer=["adamw"])
    base = spec.train_config(digits.root)
    calibration = load_or_calibrate(tmp_path, spec, base)
    assert set(calibration.step_seconds) == {
        "fp32|ac=0|adamw|batch=64",
        "bf16|ac=0|adamw|batch=64",
    }
    assert all(seconds > 0 for seconds in calibration.step_seconds.values())
    assert calibration.device.startswith("cpu") and calibration.clock == "thread CPU time"
    saved = json.loads((tmp_path / FILE_NAME).read_text())
    assert saved["step_seconds"] == calibration.step_seconds

    assert load_or_calibrate(tmp_path, spec, base) == calibration  # cached: not measured again
    wider = spec.model_copy(update={"model": ModelSection(options={"hidden": 32})})
    remeasured = load_or_calibrate(tmp_path, wider, wider.train_config(digits.root))
    assert remeasured.fingerprint != calibration.fingerprint

    trial = charged(base.replace(precision="bf16"), calibration.step_seconds)
    assert trial.step_cost_seconds == calibration.step_seconds["bf16|ac=0|adamw|batch=64"]
    assert (
        charged(base.replace(optimizer="sgd"), calibration.step_seconds).step_cost_seconds is None
    )


def test_slow_reduced_precision_is_warned_about():
    table = {"fp32|ac=0|adamw|batch=64": 0.02, "fp16|ac=0|adamw|batch=64": 0.08}
    (warning,) = slow_precision_warnings(table, "cpu (1 thread, x86_64)")
    assert "fp16 is 4.0x slower" in warning and "cpu" in warning
    assert slow_precision_warnings({"fp32|x": 0.02, "bf16|x": 0.021}, "cuda:0") == []


def test_cost_key_names_the_cost_relevant_settings(digits):
    config = TrainConfig(dataset_dir=str(digits.root), precision="fp16", activation_checkpointing=2)
    assert cost_key(config) == "fp16|ac=2|adamw|batch=64"


def test_probe_covers_the_learning_rate_range_and_reruns_when_its_inputs_change(digits, tmp_path):
    spec = small_spec(tmp_path, optimizer=["adamw"], learning_rate={"low": 1e-3, "high": 1e-2})
    base = spec.train_config(digits.root)
    probe = load_or_probe(tmp_path, base, spec)
    rates = sorted(run["learning_rate"] for run in probe.runs)
    assert rates == pytest.approx([1e-3, 10**-2.5, 1e-2])
    assert probe.fingerprint

    assert load_or_probe(tmp_path, base, spec) == probe  # same inputs: reused
    wider_lr = small_spec(tmp_path, optimizer=["adamw"], learning_rate={"low": 1e-4, "high": 1e-2})
    reprobed = load_or_probe(tmp_path, wider_lr.train_config(digits.root), wider_lr)
    assert reprobed.fingerprint != probe.fingerprint
    assert min(run["learning_rate"] for run in reprobed.runs) == pytest.approx(1e-4)

    other_model = spec.model_copy(update={"model": ModelSection(options={"depth": 2})})
    assert load_or_probe(tmp_path, other_model.train_config(digits.root), other_model) != reprobed
