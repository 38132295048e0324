"""Connecting to Ray, in one place for the whole product (studies, ``ray submit`` jobs and
``trimtab serve``): a cluster when ``RAY_ADDRESS`` names one, else a fresh local instance
(:func:`ensure_ray`); the cluster this node belongs to (:func:`attach_cluster`). It lives in
``train_loops/`` because both ``search/`` and ``serving/`` sit above it."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def ensure_ray(
    *,
    address: str | None = None,
    log_to_driver: bool | None = None,
    workers_share_driver_group: bool = True,
    logging_level: int = logging.INFO,
) -> None:
    """Initialise Ray once per process.

    ``address`` (default: ``RAY_ADDRESS``, set inside Ray Jobs or by you: ``auto`` or
    ``ray://...``) attaches to that cluster; without either a new local Ray starts, never a
    stale cluster some earlier ``ray start`` recorded on this machine. Worker logs reach this
    terminal only when ``log_to_driver`` (default: the ``TRIMTAB_RAY_LOGS`` environment
    variable is ``1``).

    ``workers_share_driver_group`` (local Ray only) keeps Ray's worker processes in the
    driver's process group, so that killing a study's group takes its trial workers with it.
    ``trimtab serve`` turns it off: a terminal's Ctrl-C then reaches the driver alone, which
    shuts Serve down in order, instead of killing every replica mid-request.
    ``logging_level`` is Ray's own (``logging.WARNING`` drops its start-up lines).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    logger.info("ray.init(address=%r)", address)
    if log_to_driver is None:
        log_to_driver = os.environ.get("TRIMTAB_RAY_LOGS", "0") == "1"
    if address == "local" and workers_share_driver_group:
        # Ray 2.60 puts each worker in a process group of its own, so killing the study's
        # process group would leave its trial workers running. Keep them in ours: a killed
        # study takes all of its processes with it.
        os.environ.setdefault("RAY_process_group_cleanup_enabled", "0")
    ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging_level)


def attach_cluster() -> str:
    """Connect to the cluster this node belongs to; return its GCS address.

    ``address="auto"`` takes ``RAY_ADDRESS`` when set, else the cluster that ``ray start``
    recorded on this node (else any Ray running on it). It never starts a Ray of its own: a
    study that silently ran on a private single-node Ray would leave the cluster's workers idle.
    Raises ``ConnectionError`` when there is none.
    """
    ray.init(address="auto")
    return ray.get_runtime_context().gcs_address
