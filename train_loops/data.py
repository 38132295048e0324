"""Datasets as Parquet: the embedded digits default, user files, validation and splits.

A *prepared* dataset is a directory holding ``train.parquet``, ``validation.parquet``,
``test.parquet`` and ``dataset.json`` (feature names, label column, class names, and the
identity of what it was made from). Training workers read the split files (with pyarrow or Ray
Data); everything upstream of that is here. Feature columns keep the user's names, whatever
they are (``label``, spaces, punctuation, non-ASCII); the prepared label column takes a name
no feature has.

Example::

    prepared = prepare_dataset(DataSpec(), root=Path(".trimtab/data"))
    features, labels = prepared.load("train")
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from train_loops.data_quality import report_outliers
from train_loops.synthetic import STRESS, stress_table

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DIGITS = "digits"
LABEL_COLUMN = "label"


class DataValidationError(ValueError):
    """A dataset that cannot be trained on; the message names the file and the column."""


class DataChangedError(DataValidationError):
    """The source (or how it is split) changed since the directory was prepared from it."""


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from and how it is split.

    Attributes:
        source: ``"digits"`` (the embedded default), ``"stress"`` (generated sequences, see
            ``train_loops.synthetic``) or a Parquet file or directory.
        label_column: name of the integer or string class column.
        feature_columns: feature column names; ``None`` takes every column but the label.
        validation_fraction: share of rows held out for validation (user data without splits).
        test_fraction: share of rows held out for the final test (user data without splits).
        seed: seed of the stratified split, so a dataset always splits the same way.
    """

    source: str = DIGITS
    label_column: str = LABEL_COLUMN
    feature_columns: tuple[str, ...] | None = None
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {value}")


@dataclass(frozen=True)
class PreparedDataset:
    """A directory of split Parquet files plus the schema every consumer agrees on."""

    root: Path
    feature_names: tuple[str, ...]
    label_column: str
    class_names: tuple[str, ...]

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.root / f"{split}.parquet"

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Features as float32 ``(rows, num_features)`` and labels as int64 class ids."""
        table = pq.read_table(self.split_path(split))
        features = np.stack(
            [table.column(name).to_numpy().astype(np.float32) for name in self.feature_names],
            axis=1,
        )
        labels = table.column(self.label_column).to_numpy().astype(np.int64)
        return features, labels

    def to_json(self) -> dict:
        return {
            "feature_names": list(self.feature_names),
            "label_column": self.label_column,
            "class_names": list(self.class_names),
        }

    @classmethod
    def open(cls, root: Path | str) -> PreparedDataset:
        """Open a directory written by :func:`prepare_dataset`."""
        root = Path(root)
        meta = json.loads((root / "dataset.json").read_text())
        return cls(
            root=root,
            feature_names=tuple(meta["feature_names"]),
            label_column=meta["label_column"],
            class_names=tuple(meta["class_names"]),
        )


def prepare_dataset(spec: DataSpec, root: Path | str) -> PreparedDataset:
    """Validate ``spec.source`` and write its seeded train/validation/test split under ``root``.

    Idempotent: an existing prepared directory made from the same data (path, size and
    modification time or content hash of each file, label and feature columns, fractions,
    seed: see :func:`data_identity`) is reused; one made from other data raises
    :class:`DataChangedError`. Raises :class:`DataValidationError` before any training if the
    data cannot be used.
    """
    root = Path(root)
    if (root / "dataset.json").exists():
        check_unchanged(spec, root)
        return PreparedDataset.open(root)
    identity = data_identity(spec)
    if spec.source == DIGITS:
        table = _digits_table()
        origin = "sklearn digits"
    elif spec.source == STRESS:
        table = stress_table(seed=spec.seed)
        origin = "generated stress sequences (train_loops.synthetic)"
    else:
        table = read_parquet_source(Path(spec.source))
        origin = spec.source
    feature_names = _feature_names(table, spec, origin)
    validate_table(table, feature_names, spec.label_column, origin)
    labels, class_names = _encode_labels(table.column(spec.label_column))
    label_name = prepared_label_name(feature_names)
    clean = pa.table(
        [_as_float32(table.column(name)) for name in feature_names]
        + [pa.array(labels, pa.int64())],
        names=[*feature_names, label_name],
    )
    train_idx, val_idx, test_idx = stratified_split(
        labels, spec.validation_fraction, spec.test_fraction, spec.seed
    )
    root.mkdir(parents=True, exist_ok=True)
    for split, indices in zip(SPLITS, (train_idx, val_idx, test_idx), strict=True):
        pq.write_table(clean.take(pa.array(indices)), root / f"{split}.parquet")
    report_outliers(root, feature_names)  # quality.json: rows unlike the rest, per split
    prepared = PreparedDataset(root, tuple(feature_names), label_name, tuple(class_names))
    tmp = root / "dataset.json.tmp"
    meta = {**prepared.to_json(), "source": origin, "identity": identity}
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    tmp.replace(root / "dataset.json")
    logger.info(
        "prepared %s into %s (%d/%d/%d rows)",
        origin,
        root,
        *map(len, (train_idx, val_idx, test_idx)),
    )
    return prepared


def prepared_label_name(feature_names: Sequence[str]) -> str:
    """``label``, or ``_label``, ``__label``, ... : the first that is not a feature's name."""
    name = LABEL_COLUMN
    while name in feature_names:
        name = f"_{name}"
    return name


def data_identity(spec: DataSpec) -> dict:
    """What a prepared split is made from: the source (each file's path, size, modification
    time and SHA-256), the label and feature columns, the split fractions and the seed."""
    return {
        "source": spec.source,
        "files": [_file_identity(path) for path in _source_files(spec.source)],
        **data_identity_settings(spec),
    }


def check_unchanged(spec: DataSpec, root: Path) -> None:
    """Raise :class:`DataChangedError` if ``root`` was prepared from other data than ``spec``
    names. A file whose size and modification time match is taken as unchanged; otherwise its
    content hash decides (a copied or touched file with the same bytes is the same data)."""
    recorded = json.loads((root / "dataset.json").read_text()).get("identity")
    if recorded is None:  # prepared before identities were recorded
        logger.warning("%s records no data identity; reusing it as it is", root)
        return
    current = data_identity_settings(spec)
    for key in current:
        if recorded[key] != current[key]:
            _changed(root, f"data {key} was {recorded[key]!r}, now {current[key]!r}")
    files = _source_files(spec.source)
    if len(files) != len(recorded["files"]):
        _changed(root, f"{spec.source} held {len(recorded['files'])} files, now {len(files)}")
    for path, old in zip(files, recorded["files"], strict=True):
        stat = path.stat()
        if stat.st_size == old["size"] and stat.st_mtime_ns == old["mtime_ns"]:
            continue
        if stat.st_size != old["size"] or _sha256(path) != old["sha256"]:
            _changed(root, f"{path} is not the file it was prepared from ({old['path']})")


def data_identity_settings(spec: DataSpec) -> dict:
    """The parts of :func:`data_identity` that need no file reads."""
    return {
        "label_column": spec.label_column,
        "feature_columns": None if spec.feature_columns is None else list(spec.feature_columns),
        "validation_fraction": spec.validation_fraction,
        "test_fraction": spec.test_fraction,
        "seed": spec.seed,
    }


def _changed(root: Path, what: str) -> None:
    raise DataChangedError(f"{root} was prepared from other data: {what}")


def _source_files(source: str) -> list[Path]:
    """The files a source reads (none for a built-in data set), in a stable order."""
    path = Path(source)
    if source == DIGITS or not path.exists():
        return []
    if path.is_file():
        return [path.resolve()]
    hidden = (".", "_")  # files pyarrow's dataset reader skips
    return sorted(
        p.resolve()
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(hidden) for part in p.relative_to(path).parts)
    )


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": _sha256(path),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_parquet_source(path: Path) -> pa.Table:
    """Read a Parquet file or a directory of Parquet files; errors name the path."""
    if not path.exists():
        raise DataValidationError(f"{path}: no such file or directory")
    try:
        table = pads.dataset(path, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as error:
        raise DataValidationError(f"{path}: not a readable Parquet file: {error}") from error
    if table.num_rows == 0:
        raise DataValidationError(f"{path}: the dataset is empty (0 rows)")
    return table


def validate_table(
    table: pa.Table, feature_names: Sequence[str], label_column: str, origin: str
) -> None:
    """Refuse missing columns, non-numeric features, NaN/inf, nulls and single-class labels."""
    if table.num_rows == 0:
        raise DataValidationError(f"{origin}: the dataset is empty (0 rows)")
    missing = [name for name in [*feature_names, label_column] if name not in table.column_names]
    if missing:
        raise DataValidationError(f"{origin}: missing column {missing[0]!r}")
    for name in feature_names:
        column = table.column(name)
        if not (
            pa.types.is_integer(column.type)
            or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type)
        ):
            raise DataValidationError(
                f"{origin}: feature column {name!r} is not numeric (type {column.type})"
            )
        if column.null_count:
            raise DataValidationError(f"{origin}: feature column {name!r} has null values")
        if pa.types.is_floating(column.type):
            values = column.to_numpy()
            if not np.isfinite(values).all():
                raise DataValidationError(
                    f"{origin}: feature column {name!r} has NaN or infinite values"
                )
    label = table.column(label_column)
    if label.null_count:
        raise DataValidationError(f"{origin}: label column {label_column!r} has null values")
    if pc.count_distinct(label).as_py() < 2:
        raise DataValidationError(
            f"{origin}: label column {label_column!r} has a single class; need at least two"
        )


def stratified_split(
    labels: np.ndarray, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified split into sorted train/validation/test row indices."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(rows) * test_fraction)
        n_val = round(len(rows) * validation_fraction)
        parts[2].append(rows[:n_test])
        parts[1].append(rows[n_test : n_test + n_val])
        parts[0].append(rows[n_test + n_val :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def _feature_names(table: pa.Table, spec: DataSpec, origin: str) -> list[str]:
    if spec.feature_columns is not None:
        return list(spec.feature_columns)
    if spec.label_column not in table.column_names:
        raise DataValidationError(f"{origin}: missing column {spec.label_column!r}")
    return [name for name in table.column_names if name != spec.label_column]


def _encode_labels(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    values = column.to_numpy(zero_copy_only=False)
    classes, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), [str(c) for c in classes]


def _as_float32(column: pa.ChunkedArray) -> pa.Array:
    return pa.array(column.to_numpy(zero_copy_only=False).astype(np.float32))


def _digits_table() -> pa.Table:
    from sklearn.datasets import load_digits

    digits = load_digits()
    columns = {f"pixel_{i}": digits.data[:, i].astype(np.float32) for i in range(64)}
    columns[LABEL_COLUMN] = digits.target.astype(np.int64)
    return pa.table(columns)
