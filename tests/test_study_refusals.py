"""A study refuses bad input before it starts Ray: one line, exit status 2, nothing left behind.
And user column names never collide with ours. All through the real ``trimtab`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from train_loops.config import TrainConfig
from train_loops.data import DataSpec, prepare_dataset


def _trimtab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "search", *args], capture_output=True, text=True, env=env
    )


def _study(tmp_path: Path, **sections) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"name": "s", "storage": str(tmp_path / "runs"), **sections}))
    return config


def _table(rows: int = 120, classes: int = 3, **extra: np.ndarray) -> pa.Table:
    rng = np.random.default_rng(0)
    y = np.arange(rows) % classes
    columns = {"f0": rng.normal(size=rows) + y, "f1": rng.normal(size=rows), **extra}
    return pa.table({**columns, "y": y})


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("trimtab: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"name": "mlpp"},
            "model 'mlpp' is unknown: use one of mlp, cnn, transformer, rnn or "
            "'package.module:factory'",
        ),
        (
            {"name": "mlp", "options": {"widht": 3}},
            "model 'mlp' has no option 'widht'; it accepts hidden, depth, dropout",
        ),
        (
            {"name": "no_such_package.models:build"},
            "model 'no_such_package.models:build': cannot import the factory: "
            "No module named 'no_such_package'",
        ),
    ],
)
def test_a_bad_model_exits_2_with_one_line_and_leaves_nothing(tmp_path, model, expected):
    result = _trimtab("study", "run", str(_study(tmp_path, model=model)))
    assert _error_line(result) == f"trimtab: error: {expected}"
    assert not (tmp_path / "runs").exists()


def test_bad_data_leaves_nothing_behind(tmp_path):
    one_class = tmp_path / "one.parquet"
    pq.write_table(pa.table({"f0": [1.0, 2.0, 3.0], "y": [1, 1, 1]}), one_class)
    config = _study(tmp_path, data={"source": str(one_class), "label_column": "y"})
    assert "has a single class" in _error_line(_trimtab("study", "run", str(config)))
    assert not (tmp_path / "runs").exists()


def test_a_changed_source_under_the_same_study_is_refused(tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(_table(), first)
    pq.write_table(_table(rows=90), second)
    data_dir = tmp_path / "runs" / "s" / "data"
    prepare_dataset(DataSpec(source=str(first), label_column="y"), data_dir)  # the first run

    config = _study(tmp_path, data={"source": str(second), "label_column": "y"})
    line = _error_line(_trimtab("study", "run", str(config)))
    assert line.startswith(f"trimtab: error: study s: {data_dir} was prepared from other data: ")
    assert f"{second.resolve()} is not the file it was prepared from ({first.resolve()})" in line
    assert line.endswith(f"run it under a new name, or delete {data_dir.parent} to start over")
    assert (data_dir / "dataset.json").exists()  # the study that was there is kept


def test_the_prepared_split_remembers_its_source(tmp_path):
    source = tmp_path / "a.parquet"
    pq.write_table(_table(), source)
    spec = DataSpec(source=str(source), label_column="y")
    prepared = prepare_dataset(spec, tmp_path / "prep")
    os.utime(source, ns=(1, 1))  # touched, same bytes: the same data
    assert prepare_dataset(spec, tmp_path / "prep") == prepared
    with pytest.raises(ValueError, match="data seed was 0, now 1"):
        prepare_dataset(DataSpec(source=str(source), label_column="y", seed=1), tmp_path / "prep")
    pq.write_table(_table(rows=121), source)  # same path, other rows
    with pytest.raises(ValueError, match="is not the file it was prepared from"):
        prepare_dataset(spec, tmp_path / "prep")


def test_any_column_name_trains_label_included(tmp_path):
    rng = np.random.default_rng(1)
    names = {"label": rng.normal(size=120), "pétale largeur (cm)": rng.normal(size=120)}
    names["a.b/c; d-e"] = rng.normal(size=120)
    source = tmp_path / "odd.parquet"
    pq.write_table(_table(**names), source)
    prepared = prepare_dataset(DataSpec(source=str(source), label_column="y"), tmp_path / "prep")
    assert prepared.feature_names == ("f0", "f1", *names)
    assert prepared.label_column == "_label"
    features, labels = prepared.load("train")
    assert features.shape[1] == 5 and set(labels.tolist()) == {0, 1, 2}
    # the user's "label" feature kept its values (not overwritten by class codes)
    table = pq.read_table(prepared.split_path("train"))
    assert not np.array_equal(table.column("label").to_numpy(), labels)

    from train_loops.worker import train_in_process

    config = TrainConfig(
        dataset_dir=str(prepared.root), epochs=1, max_steps=3, global_batch_size=16
    )
    metrics = train_in_process(config, lambda metrics, directory: None)
    assert metrics["step"] == 3 and np.isfinite(metrics["val_loss"])
