"""The label join: predictions waiting for their delayed labels, keyed by request id.

A prediction row is kept for ``retention_s`` seconds (and at most ``max_predictions`` rows,
oldest out first) with exactly what the join needs: its version, predicted class, top
probability (all that accuracy, precision/recall/F1 and calibration need of the
probabilities), slice keys and arrival time. Input features are never stored here: they may
hold personal data.

A label finds one of four fates, each counted, none an error:

- ``joined``: the prediction was waiting; the pair goes to the version's metrics window;
- ``duplicate``: the prediction already has its label (the first label wins);
- ``late``: the prediction was known but has left the store (older than the retention, or
  pushed out by newer predictions);
- ``unknown``: no prediction with that id was ever seen (as far as the store remembers: ids
  that left are remembered for as many more predictions as the store holds).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

LabelOutcome = Literal["joined", "duplicate", "late", "unknown"]
LABEL_OUTCOMES: tuple[LabelOutcome, ...] = ("joined", "duplicate", "late", "unknown")

PredictionKey = tuple[str, int]
"""``(request_id, row)``: a request may carry several rows."""


@dataclass(slots=True)
class PendingPrediction:
    """What the label join keeps of one prediction row."""

    version: int
    predicted: int
    confidence: float
    slice_keys: tuple[str, ...]
    observed_at: float
    labeled: bool = False


class PredictionStore:
    """Bounded predictions awaiting labels (not thread-safe: the monitor locks around it).

    Args:
        retention_s: how long a prediction waits for its label.
        max_predictions: most rows kept; the oldest leave first.
        clock: seconds, monotonic (``time.monotonic``); tests pass their own.
    """

    def __init__(
        self,
        retention_s: float,
        max_predictions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retention_s = retention_s
        self.max_predictions = max_predictions
        self._clock = clock
        self._pending: OrderedDict[PredictionKey, PendingPrediction] = OrderedDict()
        self._departed: deque[PredictionKey] = deque()
        self._departed_set: set[PredictionKey] = set()
        self.replaced = 0
        """Predictions that reused a waiting request id and row (a retry); the latest wins."""

    def __len__(self) -> int:
        return len(self._pending)

    def now(self) -> float:
        return self._clock()

    def add(
        self,
        request_id: str,
        row: int,
        *,
        version: int,
        predicted: int,
        confidence: float,
        slice_keys: tuple[str, ...] = (),
    ) -> None:
        """Keep one prediction row until its label arrives or it expires."""
        key = (request_id, row)
        if key in self._pending:
            self.replaced += 1
            del self._pending[key]
        self._pending[key] = PendingPrediction(
            version, predicted, confidence, slice_keys, observed_at=self._clock()
        )
        self.expire()

    def claim(self, request_id: str, row: int = 0) -> tuple[LabelOutcome, PendingPrediction | None]:
        """Find the prediction a label is for; mark it labeled when it joins."""
        self.expire()
        key = (request_id, row)
        prediction = self._pending.get(key)
        if prediction is None:
            return ("late" if key in self._departed_set else "unknown"), None
        if prediction.labeled:
            return "duplicate", None
        prediction.labeled = True
        return "joined", prediction

    def expire(self) -> None:
        """Drop predictions past the retention or beyond the size limit."""
        oldest_kept = self._clock() - self.retention_s
        while self._pending:
            key, oldest = next(iter(self._pending.items()))
            if len(self._pending) <= self.max_predictions and oldest.observed_at >= oldest_kept:
                break
            self._pending.popitem(last=False)
            self._remember_departed(key)

    def _remember_departed(self, key: PredictionKey) -> None:
        self._departed.append(key)
        self._departed_set.add(key)
        if len(self._departed) > self.max_predictions:
            self._departed_set.discard(self._departed.popleft())
