"""Winner selection: pick one point from a Pareto front of (instability, cost), both minimised.

Example::

    >>> front = [Candidate("a", 0.0, 9.0), Candidate("b", 0.1, 2.0), Candidate("c", 0.5, 1.0)]
    >>> KneePoint()(front).key
    'b'
    >>> CheapestWithin(tolerance=0.2)(front).key
    'b'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Candidate:
    """One feasible trial on the front."""

    key: str
    instability: float
    cost: float


@dataclass(frozen=True)
class Selection:
    key: str
    reason: str


class SelectionPolicy(Protocol):
    def __call__(self, front: Sequence[Candidate]) -> Selection:
        """Choose one candidate from a non-empty front and say why."""
        ...


def _check(front: Sequence[Candidate]) -> None:
    if not front:
        raise ValueError("cannot select a winner from an empty Pareto front")


@dataclass(frozen=True)
class KneePoint:
    """The point farthest from the line joining the front's two extremes, after scaling both
    objectives to [0, 1] over the front: the best trade-off, where more stability starts to
    cost disproportionately. A front of one or two points gives its most stable point."""

    def __call__(self, front: Sequence[Candidate]) -> Selection:
        _check(front)
        points = sorted(front, key=lambda c: (c.instability, c.cost))
        if len(points) <= 2:
            return Selection(points[0].key, "most stable point of a front of <= 2 points")
        lo_i, hi_i = points[0].instability, points[-1].instability
        costs = [c.cost for c in points]
        lo_c, hi_c = min(costs), max(costs)

        def scaled(c: Candidate) -> tuple[float, float]:
            return (
                (c.instability - lo_i) / ((hi_i - lo_i) or 1.0),
                (c.cost - lo_c) / ((hi_c - lo_c) or 1.0),
            )

        (x1, y1), (x2, y2) = scaled(points[0]), scaled(points[-1])
        norm = math.hypot(x2 - x1, y2 - y1) or 1.0

        def distance(c: Candidate) -> float:
            x, y = scaled(c)
            return abs((y2 - y1) * x - (x2 - x1) * y + x2 * y1 - y2 * x1) / norm

        best = max(points, key=distance)
        return Selection(
            best.key,
            f"knee of the front (distance {distance(best):.3f} from the line between its extremes)",
        )


@dataclass(frozen=True)
class CheapestWithin:
    """The cheapest point whose instability is within ``tolerance`` (absolute, on the 0–1
    instability scale) of the most stable point's."""

    tolerance: float = 0.1

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def __call__(self, front: Sequence[Candidate]) -> Selection:
        _check(front)
        best = min(c.instability for c in front)
        eligible = [c for c in front if c.instability <= best + self.tolerance]
        chosen = min(eligible, key=lambda c: (c.cost, c.instability))
        return Selection(
            chosen.key,
            f"cheapest point with instability <= {best:.3f} + "
            f"{self.tolerance} (cost {chosen.cost:.4g})",
        )


def build_selection_policy(name: str, tolerance: float = 0.1) -> SelectionPolicy:
    """``"knee"`` or ``"cheapest_within"``."""
    if name == "knee":
        return KneePoint()
    if name == "cheapest_within":
        return CheapestWithin(tolerance)
    raise ValueError(f"unknown selection policy {name!r}; use 'knee' or 'cheapest_within'")


def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (both coordinates minimised; ties all kept)."""
    front = []
    for i, (a1, a2) in enumerate(points):
        dominated = any(
            (b1 <= a1 and b2 <= a2) and (b1 < a1 or b2 < a2)
            for j, (b1, b2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front
