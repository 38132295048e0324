"""The monitoring service: one :class:`~serving.monitoring.monitor.Monitor` and one
:class:`~serving.monitoring.canary.CanaryController` for a whole application.

In Ray Serve it runs as one named actor (:func:`serving.monitoring.wiring.start_monitoring_service`)
that every replica talks to; in tests and single-process use it is a plain object. Its methods
are the whole API the replicas, the HTTP routes and the CLI use, and each answers plain
JSON-able values.

A background thread evaluates the rollback policy and refreshes the window gauges every
``evaluation_interval_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.monitoring.canary import CanaryController, CanaryError
from serving.monitoring.config import MonitoringConfig
from serving.monitoring.monitor import Monitor
from serving.monitoring.prom import MetricsRecorder, NullRecorder
from serving.monitoring.records import LabelItem, Observation, VersionReference
from serving.registry import Registry

logger = logging.getLogger(__name__)


class MonitoringService:
    """Monitor and canary of one application; thread-safe.

    Args:
        config: monitoring settings.
        registry: the registry directory (reference profiles, aliases).
        alias: the served alias (the champion).
        previous_alias: where a promotion remembers the replaced champion.
        recorder: Prometheus metrics (``RayMetricsRecorder`` inside Ray).
        run_loop: start the evaluation thread (tests call :meth:`evaluate_now` instead).
    """

    def __init__(
        self,
        config: MonitoringConfig,
        registry: Path | str,
        *,
        alias: str = "champion",
        previous_alias: str | None = None,
        recorder: MetricsRecorder | None = None,
        run_loop: bool = True,
    ) -> None:
        self.config = config
        self.recorder = recorder if recorder is not None else NullRecorder()
        self.registry = Registry(registry)
        self.monitor = Monitor(config, VersionReference.loader(self.registry))
        self.canary = CanaryController(
            self.monitor,
            self.registry,
            alias=alias,
            previous_alias=previous_alias or f"{alias}-previous",
            policy=config.rollback_policy,
            auto_promote=config.auto_promote,
            recorder=self.recorder,
        )
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        if run_loop:
            self._loop = threading.Thread(
                target=self._evaluate_forever, name="trimtab-canary", daemon=True
            )
            self._loop.start()

    # ------------------------------------------------------------------ replicas

    def ingest(self, observations: Sequence[Observation]) -> dict[str, Any] | None:
        """Take a replica's observations; answer the canary routing ``{"version", "share"}``
        (``None`` when there is no canary)."""
        if observations:
            self.monitor.ingest(observations)
        return self.routing()

    def routing(self) -> dict[str, Any] | None:
        routing = self.canary.state.routing()
        if routing is None:
            return None
        version, share = routing
        return {"version": version, "share": share}

    # ------------------------------------------------------------------ labels, summary

    def add_labels(self, items: Sequence[LabelItem]) -> dict[str, int]:
        outcomes = self.monitor.add_labels(items)
        for outcome, count in outcomes.items():
            self.recorder.inc("trimtab_labels_total", count, {"outcome": outcome})
        return outcomes

    def summary(self, include_ks: bool = True) -> dict[str, Any]:
        summary = self.monitor.summary(include_ks=include_ks)
        state = self.canary.state
        champion = self.canary.champion()
        for key, entry in summary["versions"].items():
            version = int(key)
            entry["role"] = (
                "champion"
                if version == champion
                else "canary"
                if state.active and version == state.version
                else None
            )
        summary["champion"] = champion
        summary["canary"] = state.to_dict()
        summary["rollback_policy"] = {
            "window": self.canary.policy.window,
            "min_samples": self.canary.policy.min_samples,
            "rules": [repr(rule) for rule in self.canary.policy.rules],
            "auto_promote": self.canary.auto_promote,
        }
        return summary

    # ------------------------------------------------------------------ canary

    def start_canary(self, version: int, share: float | None = None) -> dict[str, Any]:
        return self.canary.start(version, share or self.config.canary_share).to_dict()

    def stop_canary(self) -> dict[str, Any]:
        return self.canary.stop().to_dict()

    def promote_canary(self) -> dict[str, Any]:
        return self.canary.promote().to_dict()

    def champion_moved(self, version: int) -> None:
        self.canary.champion_moved(version)

    def canary_state(self) -> dict[str, Any]:
        return self.canary.state.to_dict()

    # ------------------------------------------------------------------ the loop

    def evaluate_now(self) -> str | None:
        """Follow the canary alias, judge the canary and refresh the gauges once; returns the
        decision's action (``None`` without a canary)."""
        if self.config.canary_alias is not None:
            self.canary.follow_alias(self.config.canary_alias, self.config.canary_share)
        decision = self.canary.evaluate()
        self._update_gauges()
        return decision.action if decision is not None else None

    def close(self) -> None:
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout=5)

    def _evaluate_forever(self) -> None:
        while not self._stop.wait(self.config.evaluation_interval_s):
            try:
                self.evaluate_now()
            except Exception:  # keep judging: the next evaluation may succeed
                logger.exception("canary evaluation failed")

    def _update_gauges(self) -> None:
        for version in self.monitor.versions():
            entry = self.monitor.version_summary(version, include_ks=False)
            if entry is None:
                continue
            tags = {"version": str(version)}
            drift = entry["drift"]
            for feature, psi in drift["feature_psi"].items():
                self.recorder.set("trimtab_feature_psi", psi, {**tags, "feature": feature})
            for name, value in (
                ("trimtab_feature_psi_max", drift["max_psi"]),
                ("trimtab_drifted_features_ratio", drift["drifted_share"]),
                ("trimtab_prediction_psi", drift["prediction_psi"]),
                ("trimtab_online_accuracy_ratio", entry["online"]["accuracy"]),
                ("trimtab_online_macro_f1_ratio", entry["online"]["macro_f1"]),
                ("trimtab_online_ece_ratio", entry["online"]["ece"]),
            ):
                if value is not None:
                    self.recorder.set(name, value, tags)


__all__ = ["CanaryError", "MonitoringService"]
