"""What online monitoring costs the inference service: requests/s with monitoring on vs off.

Three Serve applications run side by side on one local Ray (3 CPUs), each one replica with
one CPU, dynamic batching (``max_batch_size=16``) and the same registry alias:

- ``off``: :func:`serving.app.build_application`, the plain inference service;
- ``hook``: the same with a prediction observer that does nothing: what the observer hook of
  :mod:`serving.http_api` costs by itself, whatever the observer does;
- ``on``: :func:`serving.monitoring.wiring.build_monitored_application`, the same service with
  the monitoring observer (which also counts statuses), the canary chooser, the monitoring
  routes and the monitoring actor (drift and label-join statistics, Prometheus metrics).

For each concurrency, closed-loop clients (aiohttp, one row per ``POST /predict``, as in
``bench_serving.py``) measure the three in short alternating slices (the order rotates every
round), so load from other processes on a shared machine falls on all alike. Ratios are of
the requests completed over all rounds. The client runs on the same machine and takes CPU
from the server: read the numbers as relative.

Requests/s swing by tens of percent from slice to slice on a shared machine, so each slice
also records the server's CPU time per request: user + system time of Serve's proxy, the
setup's replica and, for ``on``, the monitoring actor (``psutil``, over the whole slice, per
request answered, read 1.5 s after the slice so the monitoring actor has binned the
slice's last rows). On a CPU-bound server, throughput is the inverse of that, and it hardly
moves with other people's load: ``off CPU / on CPU`` is the steadier on/off figure.

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_monitoring.py [--registry DIR]
        [--duration 4] [--rounds 8] [--concurrency 1 16 64] [--out results.json]

Without ``--registry`` it trains the default digits MLP into a temporary registry first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "bench"))

from bench_serving import Row, build_registry, closed_loop, free_port, wait_ready  # noqa: E402


class DoNothingObserver:
    """A prediction observer that ignores everything (not a NoOpObserver, which the app skips)."""

    def observe(self, record) -> None:
        return None


class ObserverOnly:
    """A service extension that adds only :class:`DoNothingObserver`: the hook's own cost."""

    def start(self) -> None:
        return None

    def observer(self) -> DoNothingObserver:
        return DoNothingObserver()

    def chooser(self, holder):
        return holder

    def routers(self) -> list:
        return []

    def admin_routers(self) -> list:
        return []

    async def alias_moved(self, move) -> None:
        return None


SETUPS = ("off", "hook", "on")
SETTLE_S = 1.5
"""Idle seconds after each slice before its CPU time is read: one ``flush_interval_s`` and a
half, so the monitoring actor's work on the slice's last observations counts for ``on``."""


@dataclass
class ServerProcesses:
    """The processes that serve one setup's requests: their CPU time is what it costs."""

    pids: dict[str, list[int]]

    @classmethod
    def find(cls) -> ServerProcesses:
        import psutil

        titles: dict[int, str] = {}
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = process.info["cmdline"] or [""]
            titles[process.info["pid"]] = cmdline[0]

        def matching(prefix: str) -> list[int]:
            found = [pid for pid, title in titles.items() if title.startswith(prefix)]
            if not found:
                raise RuntimeError(f"no process titled {prefix}*")
            return found

        proxy = matching("ray::ProxyActor")
        return cls(
            {
                setup: proxy
                + matching(f"ray::ServeReplica:bench-{setup}:")
                + (matching("ray::MonitoringService") if setup == "on" else [])
                for setup in SETUPS
            }
        )

    def cpu_seconds(self, setup: str) -> float:
        import psutil

        total = 0.0
        for pid in self.pids[setup]:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        return total


def deploy(registry_root: Path) -> dict[str, str]:
    """Start Serve with the three services; return their URLs."""
    from ray import serve

    from serving.app import build_application
    from serving.monitoring.config import MonitoringConfig
    from serving.monitoring.wiring import build_monitored_application, start_monitoring_service
    from serving.serve_config import ServeConfig

    port = free_port()
    common = {
        "registry": registry_root,
        "port": port,
        "num_replicas": 1,
        "max_batch_size": 16,
        "ray_actor_options": {"num_cpus": 1},
        "admin_token": None,
    }
    configs = {
        setup: ServeConfig(app_name=f"bench-{setup}", route_prefix=f"/{setup}", **common)
        for setup in SETUPS
    }
    monitoring = MonitoringConfig()
    start_monitoring_service(configs["on"], monitoring)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    applications = {
        "off": build_application(configs["off"]),
        "hook": build_application(configs["hook"], extension=ObserverOnly()),
        "on": build_monitored_application(configs["on"], monitoring),
    }
    for setup, application in applications.items():
        config = configs[setup]
        serve.run(application, name=config.app_name, route_prefix=config.route_prefix)
    urls = {setup: config.url for setup, config in configs.items()}
    for url in urls.values():
        wait_ready(url)
    return urls


def measure(urls: dict[str, str], concurrency: list[int], seconds: float, rounds: int) -> list:
    servers = ServerProcesses.find()
    results = []
    for clients in concurrency:
        per_setup: dict[str, list[Row]] = {setup: [] for setup in SETUPS}
        cpu_ms: dict[str, list[float]] = {setup: [] for setup in SETUPS}
        for round_number in range(rounds):
            shift = round_number % len(SETUPS)
            for setup in SETUPS[shift:] + SETUPS[:shift]:
                cpu_before = servers.cpu_seconds(setup)
                row = asyncio.run(closed_loop(urls[setup], clients, warmup_s=0.5, seconds=seconds))
                time.sleep(SETTLE_S)  # the replica ships its last observations, the actor bins them
                cpu = servers.cpu_seconds(setup) - cpu_before
                row.setup = setup
                per_setup[setup].append(row)
                cpu_ms[setup].append(1000.0 * cpu / max(1, row.completed))
            print(
                f"  {clients:3d} clients round {round_number + 1}: "
                + "  ".join(f"{s} {per_setup[s][-1].requests_per_s:5.0f}" for s in SETUPS)
                + " req/s; server CPU ms/request "
                + " ".join(f"{s} {cpu_ms[s][-1]:.2f}" for s in SETUPS),
                flush=True,
            )
        entry: dict = {"clients": clients, "rounds": rounds, "seconds_per_round": seconds}
        for setup, rows in per_setup.items():
            entry[f"{setup}_requests_per_s"] = float(np.mean([r.requests_per_s for r in rows]))
            entry[f"{setup}_p50_ms"] = float(np.median([r.p50_ms for r in rows]))
            entry[f"{setup}_p99_ms"] = float(np.median([r.p99_ms for r in rows]))
            entry[f"{setup}_errors"] = sum(r.errors for r in rows)
        for setup, values in cpu_ms.items():
            entry[f"{setup}_cpu_ms_per_request"] = float(np.median(values))
        entry["on_over_off_cpu"] = entry["off_cpu_ms_per_request"] / entry["on_cpu_ms_per_request"]
        entry["cpu_ms_per_request"] = cpu_ms
        entry["on_over_off"] = entry["on_requests_per_s"] / entry["off_requests_per_s"]
        entry["hook_over_off"] = entry["hook_requests_per_s"] / entry["off_requests_per_s"]
        entry["on_over_hook"] = entry["on_requests_per_s"] / entry["hook_requests_per_s"]
        entry["measurements"] = {s: [asdict(r) for r in rows] for s, rows in per_setup.items()}
        results.append(entry)
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "| clients | off req/s | hook req/s | on req/s | on/off | hook/off | on/hook "
        "| p50 ms off / hook / on | p99 ms off / hook / on | errors "
        "| server CPU ms/request off / hook / on | on/off, CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in results:
        lines.append(
            f"| {e['clients']} | {e['off_requests_per_s']:.0f} | {e['hook_requests_per_s']:.0f} "
            f"| {e['on_requests_per_s']:.0f} | {e['on_over_off']:.2f} | {e['hook_over_off']:.2f} "
            f"| {e['on_over_hook']:.2f} "
            f"| {e['off_p50_ms']:.1f} / {e['hook_p50_ms']:.1f} / {e['on_p50_ms']:.1f} "
            f"| {e['off_p99_ms']:.1f} / {e['hook_p99_ms']:.1f} / {e['on_p99_ms']:.1f} "
            f"| {sum(e[f'{s}_errors'] for s in SETUPS)} "
            f"| {e['off_cpu_ms_per_request']:.2f} / {e['hook_cpu_ms_per_request']:.2f} "
            f"/ {e['on_cpu_ms_per_request']:.2f} | {e['on_over_off_cpu']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=8, help="measurements per setup")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    arguments = parser.parse_args()

    import ray
    from ray import serve

    from serving.monitoring.wiring import stop_monitoring_service
    from serving.serve_config import ServeConfig

    with tempfile.TemporaryDirectory(prefix="trimtab-bench-monitoring-") as scratch:
        registry_root = arguments.registry or build_registry(Path(scratch))
        ray.init(num_cpus=3, address="local", include_dashboard=False, log_to_driver=False)
        try:
            urls = deploy(registry_root)
            results = measure(urls, arguments.concurrency, arguments.duration, arguments.rounds)
        finally:
            serve.shutdown()
            stop_monitoring_service(ServeConfig(registry=registry_root, app_name="bench-on"))
            ray.shutdown()
    print()
    print(markdown(results))
    if arguments.out is not None:
        arguments.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
