"""Robust standardisation and outlier rows: a x1e3 block of rows must not wreck every row."""

from __future__ import annotations

import shutil

import numpy as np
import torch
from sklearn.datasets import load_digits

from tests.corrupt_data import DIGITS_MAX_PIXEL, write_scaled_block_source
from train_loops.checkpoint import load_model_for_export
from train_loops.config import TrainConfig
from train_loops.data import DataSpec, prepare_dataset
from train_loops.data_quality import outlier_rows, read_quality_report
from train_loops.models import ModelSpec, build_model, fit_standardization
from train_loops.worker import train_in_process


def test_outlier_rows_flag_exactly_a_scaled_block() -> None:
    features = load_digits().data.astype(np.float32)
    assert not outlier_rows(features).any()  # clean digits: nothing flagged
    corrupt = features.copy()
    corrupt[400:600] *= 1e3
    assert np.array_equal(np.flatnonzero(outlier_rows(corrupt)), np.arange(400, 600))
    # the standardisation the model bakes in ignores the block (a plain std would be ~1e3)
    model = build_model(ModelSpec("mlp"), 64, 10)
    fit_standardization(model, corrupt)
    clean_std = np.maximum(np.delete(features, np.s_[400:600], axis=0).std(axis=0), 1e-6)
    np.testing.assert_allclose(model.standardize.std.numpy(), clean_std, rtol=1e-4)
    assert corrupt.std(axis=0).max() > 1e3


def _final_checkpoint(config, keep):
    kept = {}

    def report(metrics, directory):
        if directory is not None:
            target = keep / f"step-{int(metrics['step'])}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(directory, target)
            kept["last"] = target

    final = train_in_process(config, report)
    return final, kept["last"]


def _accuracy(checkpoint, rows=None) -> float:
    model, dataset, _, _ = load_model_for_export(checkpoint)
    x, y = dataset.load("validation")
    if rows is not None:
        x, y = x[rows], y[rows]
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((predictions == y).mean())


def test_a_scaled_block_left_in_the_training_split_is_reported_and_does_not_wreck_training(
    digits, tmp_path
):
    source = write_scaled_block_source(tmp_path / "digits-corrupt.parquet", rows=200, scale=1e3)
    prepared = prepare_dataset(DataSpec(source=str(source)), tmp_path / "prepared")
    report = read_quality_report(prepared.root)
    for split in ("train", "validation", "test"):
        x, _ = prepared.load(split)
        truth = np.flatnonzero(x.max(axis=1) > DIGITS_MAX_PIXEL)
        assert report.outliers(split) == truth.tolist(), split
    assert len(report.outliers("train")) > 100  # most of the 200 rows landed in training
    assert read_quality_report(digits.root).outliers("train") == []

    settings = {"epochs": 4, "report_every_steps": 20}
    clean, clean_checkpoint = _final_checkpoint(
        TrainConfig(dataset_dir=str(digits.root), **settings), tmp_path / "clean"
    )
    corrupt, corrupt_checkpoint = _final_checkpoint(
        TrainConfig(dataset_dir=str(prepared.root), **settings), tmp_path / "corrupt"
    )
    x_val, _ = prepared.load("validation")
    clean_rows = np.flatnonzero(x_val.max(axis=1) <= DIGITS_MAX_PIXEL)
    assert len(clean_rows) == len(x_val) - len(report.outliers("validation"))
    clean_accuracy = _accuracy(clean_checkpoint, clean_rows)
    corrupt_accuracy = _accuracy(corrupt_checkpoint, clean_rows)
    print(
        f"\nclean-row validation accuracy: clean run {clean_accuracy:.3f}, "
        f"x1e3 block in training {corrupt_accuracy:.3f} (run's val_accuracy "
        f"{clean['val_accuracy']:.3f} vs {corrupt['val_accuracy']:.3f})"
    )
    assert corrupt_accuracy >= clean_accuracy - 0.02
