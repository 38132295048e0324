"""What online monitoring costs per request in CPU time, measured in one process, without Ray.

``bench_monitoring.py`` measures requests/s through Ray Serve, which on a shared 2-core machine
swings by tens of percent between slices. This benchmark measures the part that monitoring adds,
as CPU time per request, where noise from other processes barely reaches it:

- ``off``: the inference app of :func:`serving.http_api.create_http_app` around a
  :class:`~serving.inference.ModelHolder` (onnxruntime, the digits MLP of ``bench_serving``);
- ``hook``: the same with a prediction observer that does nothing;
- ``on``: the app as Serve's replicas run it with monitoring: a
  :class:`~serving.monitoring.extension.MonitoringExtension` as observer and replica extension
  (canary chooser, status counts) and the monitoring routes, its service
  (:class:`~serving.monitoring.service.MonitoringService`) in this process, flushed every
  ``--flush-every`` requests, so the statistics (PSI/KS binning, label join store, the
  service's own bookkeeping) are paid for inside the timed block.

Each variant answers ``--requests`` single-row ``POST /predict`` calls from an
``httpx.AsyncClient`` over ``ASGITransport`` (client and app in one event loop); the variants
take turns for ``--rounds`` rounds and each figure is the median over rounds of the process's
CPU time (``time.process_time``, all threads) per request; the summary line gives the median
of the per-round differences from ``off``. The difference ``on − off`` is what
monitoring costs a replica and the monitoring actor together per request, apart from the one
Ray call per flush that ships the observations and the Prometheus instruments (recorded
through a no-op recorder here: ``ray.serve.metrics`` needs a Serve replica).

Usage::

    .venv/bin/python bench/bench_monitoring_cpu.py [--requests 400] [--rounds 8]
        [--flush-every 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "bench"))

from bench_monitoring import SETUPS, DoNothingObserver  # noqa: E402
from bench_serving import build_registry  # noqa: E402


def build_apps(registry_root: Path) -> tuple[dict, Callable[[], None]]:
    """The three apps, and the ``flush`` that the replica's background thread would run
    (it hands the observations to the service, which bins them at once)."""
    from serving.http_api import create_http_app, extension_options
    from serving.inference import ModelHolder
    from serving.monitoring.client import LocalServiceClient
    from serving.monitoring.config import MonitoringConfig
    from serving.monitoring.extension import MonitoringExtension
    from serving.monitoring.service import MonitoringService
    from serving.registry import Registry
    from serving.serve_config import ServeConfig

    config = ServeConfig(registry=registry_root, admin_token=None)
    monitoring = MonitoringConfig(flush_interval_s=3600.0)  # flushed by hand, in the timed block
    service = MonitoringService(monitoring, registry_root, run_loop=False)
    replica = MonitoringExtension(LocalServiceClient(service), monitoring, registry_root)

    def holder() -> ModelHolder:
        made = ModelHolder(Registry(registry_root), "champion", intra_op_num_threads=1)
        made.load()
        return made

    monitored = holder()
    on = create_http_app(monitored, config, **extension_options(replica, monitored))
    apps = {
        "off": create_http_app(holder(), config),
        "hook": create_http_app(holder(), config, observer=DoNothingObserver()),
        "on": on,
    }

    return apps, replica.flush


async def cpu_per_request(
    app, requests: int, flush: Callable[[], None] | None, flush_every: int
) -> float:
    import httpx

    body = {"instances": [np.random.default_rng(0).random(64).tolist()]}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(20):  # warm-up
            (await client.post("/predict", json=body)).raise_for_status()
        if flush is not None:
            flush()
        started = time.process_time()
        for index in range(1, requests + 1):
            response = await client.post("/predict", json=body)
            if response.status_code != 200:
                raise RuntimeError(response.text)
            if flush is not None and index % flush_every == 0:
                flush()
        if flush is not None:
            flush()
        return (time.process_time() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=400, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--flush-every", type=int, default=100)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trimtab-bench-monitoring-cpu-") as scratch:
        registry_root = arguments.registry or build_registry(Path(scratch))
        apps, flush = build_apps(registry_root)
        per_setup: dict[str, list[float]] = {setup: [] for setup in SETUPS}
        for round_number in range(arguments.rounds):
            shift = round_number % len(SETUPS)
            for setup in SETUPS[shift:] + SETUPS[:shift]:
                seconds = asyncio.run(
                    cpu_per_request(
                        apps[setup],
                        arguments.requests,
                        flush if setup == "on" else None,
                        arguments.flush_every,
                    )
                )
                per_setup[setup].append(seconds * 1000.0)
            print(
                f"round {round_number + 1}: "
                + "  ".join(f"{s} {per_setup[s][-1]:.3f}" for s in SETUPS)
                + " CPU ms/request",
                flush=True,
            )
    median = {setup: statistics.median(values) for setup, values in per_setup.items()}
    print()
    print("| setup | CPU ms/request (median) | min–max | vs off |")
    print("| --- | ---: | ---: | ---: |")
    for setup in SETUPS:
        values = per_setup[setup]
        print(
            f"| {setup} | {median[setup]:.3f} | {min(values):.3f}–{max(values):.3f} "
            f"| {median[setup] - median['off']:+.3f} ms |"
        )
    paired = {
        setup: statistics.median(
            a - b for a, b in zip(per_setup[setup], per_setup["off"], strict=True)
        )
        for setup in ("hook", "on")
    }
    print()
    print(
        f"monitoring adds {paired['on']:.3f} ms of CPU per request "
        f"(the hook alone {paired['hook']:+.3f} ms): medians of the per-round differences"
    )


if __name__ == "__main__":
    main()
