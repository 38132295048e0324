"""Winner selection: pick one point from a Pareto front of (instability, cost), both minimised,
letting validation loss decide between points the trade-off cannot tell apart.

Example::

    >>> front = [Candidate("a", 0.0, 9.0), Candidate("b", 0.1, 2.0), Candidate("c", 0.5, 1.0)]
    >>> KneePoint()(front).key
    'b'
    >>> CheapestWithin(tolerance=0.2)(front).key
    'b'
    >>> front = [Candidate("a", 0.0, 2.0, val_loss=0.4), Candidate("b", 0.02, 2.1, val_loss=0.1)]
    >>> PreferLowerValidationLoss(KneePoint(), instability_tolerance=0.05)(front).key
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
    val_loss: float = math.inf
    """Validation loss at the end of the trial (``inf``: unknown)."""


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
            return Selection(
                points[0].key,
                f"most stable point of the (instability, cost) front: {len(points)} "
                f"point{'s' if len(points) > 1 else ''}, too few for a knee",
            )
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


@dataclass(frozen=True)
class PreferLowerValidationLoss:
    """Wraps a policy. Given every feasible candidate, it lets ``policy`` choose from their
    (instability, cost) Pareto front; then, among all candidates within tolerance of that
    choice — instability at most ``instability_tolerance`` higher (absolute) and cost at most
    ``cost_tolerance`` higher (relative) — the one with the lowest validation loss wins, and
    the reason says so. Accuracy beyond the floor then counts: of two nearly equally stable,
    equally cheap trials the better model is shipped."""

    policy: SelectionPolicy
    instability_tolerance: float = 0.05
    cost_tolerance: float = 0.1

    def __post_init__(self) -> None:
        for name in ("instability_tolerance", "cost_tolerance"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def __call__(self, candidates: Sequence[Candidate]) -> Selection:
        _check(candidates)
        points = [(c.instability, c.cost) for c in candidates]
        chosen = self.policy([candidates[i] for i in pareto_indices(points)])
        base = next(c for c in candidates if c.key == chosen.key)
        close = [
            c
            for c in candidates
            if c.instability <= base.instability + self.instability_tolerance
            and c.cost <= base.cost * (1 + self.cost_tolerance) + 1e-12
        ]
        best = min(close, key=lambda c: (c.val_loss, c.cost, c.instability))
        if best.key == base.key or not best.val_loss < base.val_loss:
            return chosen
        return Selection(
            best.key,
            f"{chosen.reason}; then {best.key} over {base.key} for its lower validation loss "
            f"({best.val_loss:.4g} vs {base.val_loss:.4g}) within tolerance (instability "
            f"+{self.instability_tolerance:g}, cost +{self.cost_tolerance:.0%})",
        )


def build_selection_policy(
    name: str, tolerance: float = 0.1, cost_tolerance: float = 0.1
) -> SelectionPolicy:
    """``"knee"`` or ``"cheapest_within"``, with :class:`PreferLowerValidationLoss` around it
    (``tolerance`` on the instability scale, ``cost_tolerance`` relative)."""
    if name == "knee":
        policy: SelectionPolicy = KneePoint()
    elif name == "cheapest_within":
        policy = CheapestWithin(tolerance)
    else:
        raise ValueError(f"unknown selection policy {name!r}; use 'knee' or 'cheapest_within'")
    return PreferLowerValidationLoss(
        policy, instability_tolerance=tolerance, cost_tolerance=cost_tolerance
    )


def pareto_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (every coordinate minimised; ties all kept)."""

    def dominates(b: Sequence[float], a: Sequence[float]) -> bool:
        return all(y <= x for y, x in zip(b, a, strict=True)) and any(
            y < x for y, x in zip(b, a, strict=True)
        )

    return [
        i
        for i, a in enumerate(points)
        if not any(dominates(b, a) for j, b in enumerate(points) if j != i)
    ]
