"""Online classification metrics over a sliding window of labeled predictions.

:class:`LabeledWindow` keeps the latest ``size`` predictions whose label has arrived and
updates, as each row enters and the oldest leaves, a confusion matrix and the calibration bins
(overall and per slice). The figures computed from them are scikit-learn's:

- accuracy: ``sklearn.metrics.accuracy_score``;
- macro precision, recall and F1: ``precision_recall_fscore_support(average="macro",
  zero_division=0)`` over the classes present among the window's labels or predictions
  (scikit-learn's default ``labels=None``);
- ECE with 15 equal-width confidence bins: ``sum_b |B_b| / n * |accuracy(B_b) -
  confidence(B_b)|``, where confidence is the top probability and bin ``b`` holds confidences
  in ``(b/15, (b+1)/15]`` (a confidence of exactly 0 goes to the first bin).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

ECE_BINS = 15
_INNER_EDGES = np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1].tolist()


def calibration_bins(confidences: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Bin index of each confidence: ``b`` such that ``b/bins < c <= (b+1)/bins``."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], confidences, side="left")


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of ``probabilities`` ``(rows, classes)`` against integer ``labels``, in [0, 1]."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(probabilities) == 0:
        raise ValueError("ECE of no rows is undefined")
    confidences = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    sums = _calibration_sums(calibration_bins(confidences, bins), confidences, correct, bins)
    return _ece_from_sums(sums)


def _calibration_sums(
    bin_indices: np.ndarray, confidences: np.ndarray, correct: np.ndarray, bins: int
) -> np.ndarray:
    """``(bins, 3)``: rows, summed confidence and summed correctness per bin."""
    return np.stack(
        [
            np.bincount(bin_indices, minlength=bins).astype(np.float64),
            np.bincount(bin_indices, weights=confidences, minlength=bins),
            np.bincount(bin_indices, weights=correct, minlength=bins),
        ],
        axis=1,
    )


def _ece_from_sums(sums: np.ndarray) -> float:
    total = sums[:, 0].sum()
    if total <= 0:
        return float("nan")
    # |sum(correct) - sum(confidence)| / n per bin is |B|/n * |acc(B) - conf(B)|.
    return float(min(max(np.abs(sums[:, 2] - sums[:, 1]).sum() / total, 0.0), 1.0))


def classification_metrics(confusion: np.ndarray) -> dict[str, float | None]:
    """Accuracy and macro precision/recall/F1 from a confusion matrix (rows: true class,
    columns: predicted class), as scikit-learn computes them; ``None`` for an empty matrix."""
    total = int(confusion.sum())
    if total == 0:
        return {"accuracy": None, "macro_precision": None, "macro_recall": None, "macro_f1": None}
    true_positives = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    present = (predicted + actual) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        recall = np.where(actual > 0, true_positives / actual, 0.0)
        denominator = precision + recall
        f1 = np.where(denominator > 0, 2 * precision * recall / denominator, 0.0)
    return {
        "accuracy": float(true_positives.sum() / total),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
    }


@dataclass(frozen=True)
class LabeledRow:
    """One prediction joined with its label."""

    label: int
    predicted: int
    confidence: float
    slice_keys: tuple[str, ...] = ()


class _Counts:
    """A confusion matrix and calibration sums, updated a row at a time."""

    def __init__(self, num_classes: int) -> None:
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.calibration = np.zeros((ECE_BINS, 3), dtype=np.float64)
        self.rows = 0

    def update(self, row: LabeledRow, sign: int) -> None:
        self.confusion[row.label, row.predicted] += sign
        calibration_bin = bisect_left(_INNER_EDGES, row.confidence)  # = calibration_bins
        self.calibration[calibration_bin] += sign * np.array(
            [1.0, row.confidence, float(row.label == row.predicted)]
        )
        self.rows += sign

    def to_dict(self) -> dict[str, Any]:
        ece = _ece_from_sums(self.calibration) if self.rows else None
        return {"labeled": self.rows, **classification_metrics(self.confusion), "ece": ece}


class LabeledWindow:
    """The latest ``size`` labeled predictions of one version, with running counts overall
    and per slice (not thread-safe: the monitor locks around it)."""

    def __init__(self, num_classes: int, size: int) -> None:
        self.num_classes = num_classes
        self.size = size
        self._rows: deque[LabeledRow] = deque()
        self._overall = _Counts(num_classes)
        self._slices: dict[str, _Counts] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: LabeledRow) -> None:
        if not (0 <= row.label < self.num_classes and 0 <= row.predicted < self.num_classes):
            raise ValueError(f"class out of range for {self.num_classes} classes: {row}")
        self._rows.append(row)
        self._apply(row, 1)
        if len(self._rows) > self.size:
            self._apply(self._rows.popleft(), -1)

    def _apply(self, row: LabeledRow, sign: int) -> None:
        self._overall.update(row, sign)
        for key in row.slice_keys:
            counts = self._slices.get(key)
            if counts is None:
                counts = self._slices[key] = _Counts(self.num_classes)
            counts.update(row, sign)
            if counts.rows == 0:
                del self._slices[key]

    def metrics(self) -> dict[str, Any]:
        """Accuracy, macro P/R/F1 and ECE over the whole window."""
        return self._overall.to_dict()

    def slice_metrics(self) -> dict[str, dict[str, Any]]:
        return {key: self._slices[key].to_dict() for key in sorted(self._slices)}

    def tail(self, last: int) -> Iterable[LabeledRow]:
        """The latest ``last`` rows, oldest first."""
        skip = max(len(self._rows) - last, 0)
        return (row for index, row in enumerate(self._rows) if index >= skip)

    def tail_metrics(self, last: int) -> dict[str, Any]:
        """Accuracy and ECE over the latest ``last`` rows (recomputed from the rows)."""
        if last >= len(self._rows):
            return self.metrics()
        counts = _Counts(self.num_classes)
        for row in self.tail(last):
            counts.update(row, 1)
        return counts.to_dict()
