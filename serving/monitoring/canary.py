"""Canary releases: a candidate version takes a share of traffic beside the champion, is
judged by the rollback policy over each window, and is rolled back or promoted.

**Split.** :func:`canary_fraction` hashes the request id (with the canary's version as salt)
to a number in [0, 1); the request goes to the canary when it is below the share. A retry with
the same ``x-request-id`` therefore reaches the same version, and every replica agrees without
talking to the others. Requests without a client id are split at random.

**Judging.** :meth:`CanaryController.evaluate` (called every ``evaluation_interval_s`` by the
monitoring service) builds :class:`~policies.rollback.WindowStats` for the canary and the
champion from the monitor and applies the :class:`~policies.rollback.RollbackPolicy`. A breach
ends the canary at once (``rolled_back``: all traffic back to the champion, which never
stopped serving), logged with the reasons and counted in ``trimtab_rollbacks_total``. A canary
that holds is promoted by :meth:`CanaryController.promote` (``POST /admin/canary/promote``),
or automatically after a full window of labeled rows passes when ``auto_promote`` is set.

**Promotion** moves the served alias with :meth:`serving.registry.Registry.move_alias`, as
``POST /admin/promote`` does (the old champion is remembered in ``<alias>-previous``); every
replica follows the alias.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from policies.rollback import RollbackDecision, RollbackPolicy
from serving.monitoring.monitor import Monitor
from serving.monitoring.prom import MetricsRecorder, NullRecorder
from serving.registry import Registry, RegistryError

logger = logging.getLogger(__name__)

CanaryStatus = Literal["idle", "active", "rolled_back", "promoted", "stopped"]


def canary_fraction(request_id: str, version: int) -> float:
    """A number in [0, 1) fixed by the request id and the canary version."""
    digest = hashlib.blake2b(f"{version}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class CanaryError(Exception):
    """A canary cannot start, stop or be promoted (the message says why)."""


@dataclass(frozen=True)
class CanaryState:
    """The canary as every replica and the summary see it."""

    status: CanaryStatus = "idle"
    version: int | None = None
    share: float = 0.0
    champion: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    reasons: tuple[str, ...] = ()
    """Why it ended (rollback breaches), or why the last evaluation waited."""
    last_decision: str | None = None
    labeled: int = 0
    """Labeled canary rows the last evaluation judged (at most the policy window)."""
    observed: int = 0
    """Canary prediction rows the last evaluation judged (at most the policy window)."""

    @property
    def active(self) -> bool:
        return self.status == "active"

    def routing(self) -> tuple[int, float] | None:
        """``(version, share)`` while traffic should go to the canary."""
        if self.active and self.version is not None:
            return self.version, self.share
        return None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "reasons": list(self.reasons)}


class CanaryController:
    """The canary's state and the decisions about it; thread-safe, no Ray.

    Args:
        monitor: where the window statistics come from.
        registry: where versions and aliases live.
        alias: the served (champion) alias; ``previous_alias`` remembers the version a
            promotion replaced.
        policy: the rollback rules.
        auto_promote: promote after a full policy window of labeled rows holds.
        recorder: Prometheus metrics.
    """

    def __init__(
        self,
        monitor: Monitor,
        registry: Registry,
        *,
        alias: str,
        previous_alias: str,
        policy: RollbackPolicy,
        auto_promote: bool = False,
        recorder: MetricsRecorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.monitor = monitor
        self.registry = registry
        self.alias = alias
        self.previous_alias = previous_alias
        self.policy = policy
        self.auto_promote = auto_promote
        self.recorder = recorder if recorder is not None else NullRecorder()
        self._clock = clock
        self._lock = threading.RLock()
        self._state = CanaryState()
        self._judged: set[int] = set()
        """Versions that were rolled back or promoted: the canary alias does not restart them."""

    @property
    def state(self) -> CanaryState:
        return self._state

    def champion(self) -> int | None:
        try:
            return self.registry.resolve(self.alias)
        except RegistryError:
            return None

    def start(self, version: int, share: float) -> CanaryState:
        """Send ``share`` of the traffic to ``version``; replaces any running canary."""
        if not 0.0 < share < 1.0:
            raise CanaryError(f"share must be in (0, 1), got {share!r}")
        try:
            source = self.registry.get(version)
            source.verify()
        except RegistryError as error:
            raise CanaryError(f"cannot canary version {version}: {error}") from None
        champion = self.champion()
        if champion == version:
            raise CanaryError(f"version {version} is already the champion ({self.alias!r})")
        with self._lock:
            self.monitor.reset_version(version)
            self._judged.discard(version)
            self._end_metrics()
            self._state = CanaryState("active", version, share, champion, started_at=self._clock())
            self.recorder.set("trimtab_canary_share_ratio", share, {"version": str(version)})
        logger.warning("canary: version %d takes %.0f%% of traffic", version, share * 100)
        return self._state

    def stop(self) -> CanaryState:
        """End the canary by hand: all traffic back to the champion."""
        with self._lock:
            if not self._state.active:
                raise CanaryError("no canary is running")
            self._end("stopped", ("stopped by an admin",))
            logger.warning("canary: version %s stopped by an admin", self._state.version)
            return self._state

    def promote(self) -> CanaryState:
        """Make the canary the champion (moves the alias; replicas follow it)."""
        with self._lock:
            if not self._state.active or self._state.version is None:
                raise CanaryError("no canary is running")
            version = self._state.version
            try:
                self.registry.move_alias(self.alias, version, previous_alias=self.previous_alias)
            except RegistryError as error:
                raise CanaryError(f"cannot promote version {version}: {error}") from None
            self._end("promoted", ())
            self.recorder.inc("trimtab_promotions_total", 1, {"version": str(version)})
            logger.warning("canary: version %d promoted to %s", version, self.alias)
            return self._state

    def champion_moved(self, version: int) -> None:
        """The served alias was moved elsewhere (``POST /admin/promote``): a canary of that
        version has become the champion."""
        with self._lock:
            if self._state.active and self._state.version == version:
                self._end("promoted", ("promoted through the served alias",))

    def follow_alias(self, canary_alias: str, share: float) -> None:
        """Start a canary of the version ``canary_alias`` points to, unless it is the
        champion, the running canary or a version already judged."""
        try:
            version = self.registry.resolve(canary_alias)
        except RegistryError:
            return
        with self._lock:
            if version in self._judged or (version == self._state.version and self._state.active):
                return
            if version == self.champion():
                return
            try:
                self.start(version, share)
            except CanaryError as error:
                logger.error("not starting a canary from alias %r: %s", canary_alias, error)
                self._judged.add(version)

    def evaluate(self) -> RollbackDecision | None:
        """Judge the running canary once and act on the decision; ``None`` when none runs."""
        with self._lock:
            state = self._state
            if not state.active or state.version is None:
                return None
            window = self.policy.window
            candidate = self.monitor.window_stats(state.version, window)
            champion_version = self.champion()
            champion = (
                self.monitor.window_stats(champion_version, window)
                if champion_version is not None
                else None
            )
            decision = self.policy(candidate, champion)
            self._state = dataclasses.replace(
                state,
                champion=champion_version,
                last_decision=decision.action,
                reasons=decision.reasons,
                labeled=candidate.labeled,
                observed=candidate.observed,
            )
            if decision.rollback:
                self._end("rolled_back", decision.reasons)
                self.recorder.inc("trimtab_rollbacks_total", 1, {"version": str(state.version)})
                logger.error(
                    "canary: version %d rolled back after %d labeled and %d observed rows: %s",
                    state.version,
                    candidate.labeled,
                    candidate.observed,
                    "; ".join(decision.reasons),
                )
            elif (
                decision.action == "hold"
                and self.auto_promote
                and candidate.labeled >= self.policy.window
            ):
                self.promote()
            return decision

    def _end(self, status: CanaryStatus, reasons: tuple[str, ...]) -> None:
        state = self._state
        if state.version is not None:
            self._judged.add(state.version)
        self._end_metrics()
        self._state = dataclasses.replace(
            state, status=status, share=0.0, ended_at=self._clock(), reasons=reasons
        )

    def _end_metrics(self) -> None:
        if self._state.active and self._state.version is not None:
            self.recorder.set(
                "trimtab_canary_share_ratio", 0.0, {"version": str(self._state.version)}
            )
