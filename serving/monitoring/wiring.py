"""Monitoring plugged into the Ray Serve app of :mod:`serving.app`.

:func:`run_monitored_service` is :func:`serving.app.run_service` with monitoring: it starts
the monitoring service (one named, detached Ray actor per Serve application, taking no CPU),
then deploys the inference service with a :class:`~serving.monitoring.extension.MonitoringExtension`
as its :class:`serving.app.ServiceExtension`: the prediction observer, the canary's model
chooser (:class:`~serving.monitoring.replica.CanaryChooser`) and the monitoring routes
(:mod:`serving.monitoring.routes`).

Example::

    ray.init()
    url = run_monitored_service(ServeConfig(registry=root, port=8000), MonitoringConfig())
    ...
    serve.shutdown()
    stop_monitoring_service(ServeConfig(registry=root))
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from serving.app import build_application, check_registry, run_service
from serving.monitoring.client import ActorServiceClient
from serving.monitoring.config import MonitoringConfig
from serving.monitoring.extension import MonitoringExtension
from serving.monitoring.prom import RayMetricsRecorder
from serving.monitoring.service import MonitoringService
from serving.serve_config import ServeConfig

logger = logging.getLogger(__name__)

SERVICE_NAMESPACE = "trimtab"


def service_actor_name(serve_config: ServeConfig) -> str:
    """The monitoring actor's name: one per Serve application."""
    return f"trimtab-monitoring-{serve_config.app_name}"


def start_monitoring_service(serve_config: ServeConfig, config: MonitoringConfig) -> Any:
    """Start the monitoring actor of ``serve_config.app_name``, replacing one left from an
    earlier deploy (so the new settings apply); return its handle. Needs ``ray.init``."""
    import ray

    name = service_actor_name(serve_config)
    stop_monitoring_service(serve_config)
    actor = (
        ray.remote(MonitoringService)
        .options(
            name=name,
            namespace=SERVICE_NAMESPACE,
            lifetime="detached",
            num_cpus=0,
            max_concurrency=4,
        )
        .remote(
            config,
            serve_config.registry.resolve(),
            alias=serve_config.alias,
            previous_alias=serve_config.previous_alias,
            recorder=RayMetricsRecorder(),
        )
    )
    ray.get(actor.canary_state.remote())  # wait until it answers
    return actor


def stop_monitoring_service(serve_config: ServeConfig) -> None:
    """Kill the monitoring actor of ``serve_config.app_name`` if there is one."""
    import ray

    try:
        actor = ray.get_actor(service_actor_name(serve_config), namespace=SERVICE_NAMESPACE)
    except ValueError:
        return
    ray.kill(actor)


def check_slices(serve_config: ServeConfig, config: MonitoringConfig) -> None:
    """Refuse slices on features the served model does not have."""
    feature_names = check_registry(serve_config).manifest.input_schema.feature_names
    for spec in config.slices:
        if spec.feature not in feature_names:
            raise ValueError(
                f"slice {config.slice_name(spec)!r}: the model has no feature {spec.feature!r}"
            )


def replica_monitor(serve_config: ServeConfig, config: MonitoringConfig) -> MonitoringExtension:
    """The extension every replica runs: it reaches the service by its actor name."""
    return MonitoringExtension(
        ActorServiceClient(service_actor_name(serve_config), SERVICE_NAMESPACE),
        config,
        serve_config.registry.resolve(),
        intra_op_num_threads=serve_config.intra_op_num_threads,
        recorder=RayMetricsRecorder(),
    )


def build_monitored_application(serve_config: ServeConfig, config: MonitoringConfig) -> Application:
    """The inference application with monitoring; the monitoring service must be running
    (:func:`start_monitoring_service`)."""
    check_slices(serve_config, config)
    return build_application(serve_config, extension=replica_monitor(serve_config, config))


def run_monitored_service(serve_config: ServeConfig, config: MonitoringConfig) -> str:
    """:func:`serving.app.run_service` with monitoring: start the monitoring service, then
    Serve with the monitored replicas; return the URL. Does not block; stop with
    ``serve.shutdown()`` and :func:`stop_monitoring_service`."""
    check_slices(serve_config, config)  # before anything starts
    start_monitoring_service(serve_config, config)
    return run_service(serve_config, extension=replica_monitor(serve_config, config))
