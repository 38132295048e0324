"""Connecting to Ray: a cluster when ``RAY_ADDRESS`` names one, else a fresh local instance."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def ensure_ray() -> None:
    """Initialise Ray once per process.

    ``RAY_ADDRESS`` (set inside Ray Jobs, or by you: ``auto`` or ``ray://...``) attaches to that
    cluster; without it a new local Ray starts, never a stale cluster some earlier
    ``ray start`` recorded on this machine.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or "local"
    logger.info("ray.init(address=%r)", address)
    ray.init(address=address)
