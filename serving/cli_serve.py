"""``trimtab serve``: a registry alias behind Ray Serve, until Ctrl-C.

Example::

    export TRIMTAB_ADMIN_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(24))")
    trimtab serve --registry .trimtab/registry --alias champion --port 8000
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import click
from pydantic import ValidationError

from serving.ingress import DEFAULT_INGRESS, INGRESS_MODES, IngressMode, apply_ingress_environment


def _interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise click.UsageError(f"cannot listen on {host}:{port}: {error.strerror}") from None


@click.command("serve")
@click.option(
    "--registry",
    "registry",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The model registry directory.",
)
@click.option("--alias", default="champion", show_default=True, help="The alias to serve.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. The port has no auth of its own: keep it on loopback unless a "
    "proxy in front of it authenticates.",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--model-name", default=None, help="Name in /v2/models/{name} [manifest's].")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max-batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests per dynamic batch; 1 turns batching off.",
)
@click.option(
    "--monitoring/--no-monitoring",
    default=True,
    show_default=True,
    help="Drift, delayed-label metrics, canary and rollback (GET /monitoring/summary).",
)
@click.option(
    "--ingress",
    type=click.Choice(INGRESS_MODES),
    default=DEFAULT_INGRESS,
    show_default=True,
    help="How requests reach the replicas: HAProxy in front of the replicas' own HTTP "
    "servers, the replicas' servers alone (direct), or Serve's Python proxy. Applies to the "
    "local Ray this command starts; a cluster (--address) keeps its own.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join [$RAY_ADDRESS, else a new local Ray].",
)
def serve(
    registry: Path,
    alias: str,
    host: str,
    port: int,
    model_name: str | None,
    replicas: int,
    max_batch_size: int,
    monitoring: bool,
    ingress: IngressMode,
    address: str | None,
) -> None:
    """Serve a registry alias over HTTP (Open Inference Protocol v2 and /predict) with Ray
    Serve; admin routes need $TRIMTAB_ADMIN_TOKEN. Blocks until Ctrl-C."""
    from serving.app import check_registry, run_service
    from serving.inference import ModelUnavailableError
    from serving.serve_config import ServeConfig

    try:
        config = ServeConfig(
            registry=registry,
            alias=alias,
            host=host,
            port=port,
            model_name=model_name,
            num_replicas=replicas,
            max_batch_size=max_batch_size,
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        raise click.UsageError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    try:
        version = check_registry(config)
    except ModelUnavailableError as error:
        raise click.UsageError(str(error)) from None
    _check_port_free(host, port)

    import ray
    from ray import serve as ray_serve

    from train_loops.ray_runtime import ensure_ray

    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        scratch = Path(tempfile.mkdtemp(prefix="trimtab-serve-"))
        apply_ingress_environment(ingress, scratch)  # with a 2 s drain: a quick Ctrl-C
    ensure_ray(address=address, workers_share_driver_group=False, logging_level=logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # our lines, not Serve's INFO
    # Ctrl-C and SIGTERM both end in the `finally` below, which stops Serve and Ray. SIGINT is
    # set explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if monitoring:
            from serving.monitoring.config import MonitoringConfig
            from serving.monitoring.wiring import run_monitored_service

            url = run_monitored_service(config, MonitoringConfig())
        else:
            url = run_service(config)
        rows = json.dumps({"instances": [[0.0] * len(version.manifest.input_schema.feature_names)]})
        click.echo(f"serving {alias} (version {version.version}) of {registry} at {url}")
        if address == "local":
            click.echo(f"ingress: {ingress}")
        click.echo(
            f"admin routes: {'on' if config.admin_token else 'off (no $TRIMTAB_ADMIN_TOKEN)'}"
        )
        click.echo(f"try: curl -s {url}/predict -H 'content-type: application/json' -d '{rows}'")
        click.echo("Ctrl-C stops.")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        # Our application only: on a cluster, Serve and its other applications stay up. Its
        # replicas finish their in-flight requests first. A local Ray then goes with its
        # controller and HAProxy; serve.shutdown() would instead wait on a controller that
        # kills itself, and Ray prints that wait's failure to the terminal.
        try:
            ray_serve.delete(config.app_name)
        except Exception as error:  # Serve never started: nothing to delete; keep the cause
            click.echo(f"serve: nothing to stop ({error.__class__.__name__})", err=True)
        if monitoring:
            from serving.monitoring.wiring import stop_monitoring_service

            stop_monitoring_service(config)
        ray.shutdown()
