"""Monitoring as the inference app's :class:`serving.http_api.ServiceExtension`: the replica's
monitor (prediction observer, canary chooser, alias-move listener) plus the monitoring routes.

A module of its own so that the arrows point one way: the routes depend on the replica's
monitor (:mod:`serving.monitoring.routes` → :mod:`serving.monitoring.replica`), and this
module on both.
"""

from __future__ import annotations

from fastapi import APIRouter

from serving.monitoring import routes
from serving.monitoring.replica import ReplicaMonitor


class MonitoringExtension(ReplicaMonitor):
    """:class:`ReplicaMonitor` with the monitoring routes (labels, summary, canary admin)."""

    def routers(self) -> list[APIRouter]:
        return [routes.router]

    def admin_routers(self) -> list[APIRouter]:
        return [routes.admin_router]
