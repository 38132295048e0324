"""train_loops.data: the digits default, user Parquet files, and refusals that name the column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train_loops.data import DataSpec, DataValidationError, PreparedDataset, prepare_dataset


def test_digits_split_is_complete_seeded_and_stratified(digits, tmp_path):
    sizes = {split: len(digits.load(split)[1]) for split in ("train", "validation", "test")}
    assert sum(sizes.values()) == 1797
    assert digits.num_features == 64 and digits.num_classes == 10
    x_train, y_train = digits.load("train")
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    # every class is in every split, roughly in proportion
    for split in ("validation", "test"):
        assert set(np.unique(digits.load(split)[1])) == set(range(10))
    again = prepare_dataset(DataSpec(), tmp_path / "again")
    np.testing.assert_array_equal(again.load("test")[1], digits.load("test")[1])
    np.testing.assert_array_equal(again.load("test")[0], digits.load("test")[0])


def test_prepared_dataset_reopens(digits):
    reopened = PreparedDataset.open(digits.root)
    assert reopened == digits


def _write(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def _user_table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a": rng.normal(size=n),
        "b": rng.integers(0, 5, n),
        "y": np.array(["cat", "dog"] * (n // 2)),
    }


def test_user_file_with_string_labels(tmp_path):
    path = _write(tmp_path / "rows.parquet", **_user_table())
    prepared = prepare_dataset(DataSpec(source=str(path), label_column="y"), tmp_path / "prep")
    assert prepared.feature_names == ("a", "b")
    assert prepared.class_names == ("cat", "dog")
    assert sum(len(prepared.load(s)[1]) for s in ("train", "validation", "test")) == 60


def test_user_directory_of_parquet_files(tmp_path):
    (tmp_path / "parts").mkdir()
    _write(tmp_path / "parts" / "0.parquet", **_user_table(seed=0))
    _write(tmp_path / "parts" / "1.parquet", **_user_table(seed=1))
    prepared = prepare_dataset(
        DataSpec(source=str(tmp_path / "parts"), label_column="y", feature_columns=("a",)),
        tmp_path / "prep",
    )
    assert prepared.feature_names == ("a",)
    assert sum(len(prepared.load(s)[1]) for s in ("train", "validation", "test")) == 120


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"a": np.array([np.nan] + [0.0] * 59)}, "'a' has NaN"),
        ({"b": np.array([np.inf] + [0.0] * 59)}, "'b' has NaN or infinite"),
        ({"a": np.array(["x"] * 60)}, "'a' is not numeric"),
        ({"y": np.array(["cat"] * 60)}, "'y' has a single class"),
    ],
)
def test_bad_values_are_refused_naming_file_and_column(tmp_path, change, expected):
    path = _write(tmp_path / "bad.parquet", **{**_user_table(), **change})
    with pytest.raises(DataValidationError, match=expected) as error:
        prepare_dataset(DataSpec(source=str(path), label_column="y"), tmp_path / "prep")
    assert str(path) in str(error.value)
    assert not (tmp_path / "prep").exists()  # refused before anything was written


def test_missing_column_empty_and_unreadable_files(tmp_path):
    path = _write(tmp_path / "rows.parquet", **_user_table())
    with pytest.raises(DataValidationError, match="missing column 'label'"):
        prepare_dataset(DataSpec(source=str(path)), tmp_path / "p1")
    with pytest.raises(DataValidationError, match="missing column 'c'"):
        prepare_dataset(
            DataSpec(source=str(path), label_column="y", feature_columns=("a", "c")),
            tmp_path / "p2",
        )
    empty = _write(tmp_path / "empty.parquet", a=np.array([], float), y=np.array([], str))
    with pytest.raises(DataValidationError, match="empty"):
        prepare_dataset(DataSpec(source=str(empty), label_column="y"), tmp_path / "p3")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        prepare_dataset(DataSpec(source=str(junk), label_column="y"), tmp_path / "p4")
    with pytest.raises(DataValidationError, match="no such file"):
        prepare_dataset(DataSpec(source=str(tmp_path / "nope.parquet")), tmp_path / "p5")
