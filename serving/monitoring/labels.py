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
- ``pending``: no prediction with that id has arrived yet. Replicas ship their predictions
  to the monitor in batches, so a label can overtake its own prediction: it is held for
  ``grace_s`` seconds (at most ``max_held`` labels) and joined when the prediction arrives
  (:meth:`PredictionStore.add` hands it back); one still unmatched then is counted as
  ``expired`` (:attr:`PredictionStore.expired_held`);
- ``unknown``: reported only for labels that cannot be held (the hold is full).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

_Label = TypeVar("_Label")

LabelOutcome = Literal["joined", "pending", "duplicate", "late", "unknown"]
LABEL_OUTCOMES: tuple[LabelOutcome, ...] = ("joined", "pending", "duplicate", "late", "unknown")
LABEL_GRACE_S = 30.0
"""How long a label waits for its prediction to reach the monitor."""
MAX_HELD_LABELS = 100_000

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


class PredictionStore(Generic[_Label]):
    """Bounded predictions awaiting labels, and labels awaiting their predictions (not
    thread-safe: the monitor locks around it).

    Args:
        retention_s: how long a prediction waits for its label.
        max_predictions: most rows kept; the oldest leave first.
        clock: seconds, monotonic (``time.monotonic``); tests pass their own.
        grace_s: how long a label waits for its prediction.
        max_held: most labels held at once.
    """

    def __init__(
        self,
        retention_s: float,
        max_predictions: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        grace_s: float = LABEL_GRACE_S,
        max_held: int = MAX_HELD_LABELS,
    ) -> None:
        self.retention_s = retention_s
        self.max_predictions = max_predictions
        self.grace_s = grace_s
        self.max_held = max_held
        self._clock = clock
        self._held: OrderedDict[PredictionKey, tuple[float, list[_Label]]] = OrderedDict()
        self.expired_held = 0
        """Held labels whose prediction never arrived within ``grace_s``."""
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
    ) -> list[_Label]:
        """Keep one prediction row until its label arrives or it expires; returns the labels
        held for it (claim it with them now)."""
        key = (request_id, row)
        if key in self._pending:
            self.replaced += 1
            del self._pending[key]
        self._pending[key] = PendingPrediction(
            version, predicted, confidence, slice_keys, observed_at=self._clock()
        )
        self.expire()
        held = self._held.pop(key, None)
        return held[1] if held is not None else []

    def hold(self, request_id: str, row: int, label: _Label) -> bool:
        """Keep a label whose prediction has not arrived; ``False`` when the hold is full."""
        self._expire_held()
        key = (request_id, row)
        entry = self._held.get(key)
        if entry is not None:
            entry[1].append(label)
            return True
        if len(self._held) >= self.max_held:
            return False
        self._held[key] = (self._clock(), [label])
        return True

    @property
    def held(self) -> int:
        """Labels waiting for their predictions now."""
        self._expire_held()
        return sum(len(labels) for _, labels in self._held.values())

    def _expire_held(self) -> None:
        oldest_kept = self._clock() - self.grace_s
        while self._held:
            held_at, labels = next(iter(self._held.values()))
            if held_at >= oldest_kept:
                break
            self._held.popitem(last=False)
            self.expired_held += len(labels)

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
