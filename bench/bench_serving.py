"""Requests/s and latency of the inference service per Ray Serve ingress option, beside a plain
FastAPI + uvicorn + onnxruntime app serving the same ``.onnx`` with the same JSON.

Setups, each a server process of its own, all running at once:

- ``plain``: a minimal FastAPI app (one route, pydantic body, onnxruntime, the same response
  JSON as ``POST /predict``) under one uvicorn worker: the goal post;
- ``app``: our own FastAPI app (:func:`serving.http_api.create_http_app`, every check, no
  monitoring) under one uvicorn worker: what our app costs by itself;
- ``proxy``, ``direct``, ``haproxy``: ``trimtab serve`` (:func:`serving.app.run_service` with
  monitoring on, one replica, dynamic batching) on a Ray of its own started with the ingress
  mode's environment (:mod:`serving.ingress`). ``direct`` is measured on the replica's own port.

For each client count, closed-loop aiohttp clients (one row per ``POST /predict``) measure the
setups in short slices whose order rotates every round, so load from other processes on a
shared machine falls on all alike. Requests/s and latency percentiles pool every slice. Each
slice also records the CPU seconds every server process spent per request (``psutil``,
grouped: proxy, HAProxy, replica, monitoring actor, Ray's own daemons): where the time goes.

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_serving.py [--registry DIR]
        [--duration 3] [--rounds 3] [--concurrency 1 16 64] [--setups ...] [--out results.json]

Without ``--registry`` it trains the default digits MLP into a temporary registry first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

SETUPS = ("plain", "app", "proxy", "direct", "haproxy", "haproxy-tuned")
SERVE_SETUPS = ("proxy", "direct", "haproxy", "haproxy-tuned")
TUNED = {
    # Serve's "throughput optimized" settings for the replica (RAY_SERVE_THROUGHPUT_OPTIMIZED):
    # the app runs on the replica's own event loop rather than a second thread's.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}


@dataclass
class Row:
    setup: str
    clients: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    completed: int = 0
    """Every request answered during the run, the warm-up's included."""
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def free_port(start: int = 20000) -> int:
    from serving.ingress import free_port_block

    return free_port_block(1)


def build_registry(root: Path) -> Path:
    """Train the default digits MLP briefly, export it and register it as champion."""
    import torch

    from serving.registry import Registry, build_reference_profile
    from train_loops.data import DataSpec, prepare_dataset
    from train_loops.models import ModelSpec, build_model, fit_standardization

    digits = prepare_dataset(DataSpec(), root / "data")
    features, labels = digits.load("train")
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp"), digits.num_features, digits.num_classes)
    fit_standardization(model, features)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(10):
        for batch in torch.randperm(len(inputs)).split(128):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    onnx_path = root / "model.onnx"
    # The TorchScript exporter is much faster than the dynamo one (serving.export) and is
    # enough for a test model; it warns that it is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            torch.zeros(1, digits.num_features),
            onnx_path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    with torch.no_grad():
        predicted = model(inputs).argmax(dim=1).numpy()
    registry = Registry(root / "registry")
    version = registry.register(
        onnx_path,
        model_name="digits",
        lineage={"bench": True},
        training_config={"epochs": 10},
        offline_metrics={},
        quantization="none",
        gate_override="benchmark model: serving speed only, not gated",
        feature_names=list(digits.feature_names),
        class_names=list(digits.class_names),
        reference_profile=build_reference_profile(
            features, predicted, list(digits.feature_names), list(digits.class_names)
        ),
    )
    registry.set_alias("champion", version.version)
    return registry.root


async def closed_loop(url: str, clients: int, warmup_s: float, seconds: float) -> Row:
    """``clients`` workers posting one row each, back to back; latency of each request."""
    import aiohttp

    body = json.dumps({"instances": [[0.5] * 64]}).encode()
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors = completed = 0
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal errors, completed
            while (now := time.perf_counter()) < stop_at:
                try:
                    async with session.post(f"{url}/predict", data=body, headers=headers) as reply:
                        await reply.read()
                        ok = reply.status == 200
                    completed += 1
                except aiohttp.ClientError:
                    ok = False
                if now >= measure_from:
                    if ok:
                        latencies.append(time.perf_counter() - now)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    measured = np.asarray(latencies) * 1000.0
    return Row(
        setup="",
        clients=clients,
        requests_per_s=len(latencies) / seconds,
        p50_ms=float(np.percentile(measured, 50)) if len(measured) else float("nan"),
        p99_ms=float(np.percentile(measured, 99)) if len(measured) else float("nan"),
        errors=errors,
        completed=completed,
        latencies_ms=measured.tolist(),
    )


def wait_ready(url: str, timeout_s: float = 180.0) -> None:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready")


# --------------------------------------------------------------------------- servers


class PlainBody(BaseModel):
    """The plain app's request body (module level: FastAPI resolves the annotation here)."""

    instances: list[list[float]]


def run_plain_server(port: int, registry_root: Path) -> None:
    """The goal post: FastAPI + uvicorn + onnxruntime, nothing else."""
    import uuid

    import onnxruntime
    import uvicorn
    from fastapi import FastAPI

    from serving.registry import Registry

    source = Registry(registry_root).get("champion")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(source.onnx_path), options)
    class_names = source.manifest.output_schema.class_names
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: PlainBody) -> dict:
        (logits,) = session.run(None, {"input": np.asarray(body.instances, np.float32)})
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return {
            "model_name": "digits",
            "model_version": source.version,
            "request_id": uuid.uuid4().hex,
            "labels": [class_names[i] for i in probabilities.argmax(axis=1)],
            "probabilities": probabilities.tolist(),
        }

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_app_server(port: int, registry_root: Path) -> None:
    """Our FastAPI app, no Serve, no monitoring."""
    import uvicorn

    from serving.http_api import create_http_app
    from serving.inference import ModelHolder
    from serving.registry import Registry
    from serving.serve_config import ServeConfig

    config = ServeConfig(registry=registry_root, port=port, admin_token=None)
    holder = ModelHolder(Registry(registry_root), config.alias)
    holder.load()
    app = create_http_app(holder, config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_serve_server(mode: str, port: int, registry_root: Path, scratch: Path) -> None:
    """``trimtab serve`` in ``mode``: its own Ray, monitoring on; prints the URL to use."""
    from serving.ingress import apply_ingress_environment, replica_http_port

    tuned = mode.endswith("-tuned")
    mode = mode.removesuffix("-tuned")
    environment = apply_ingress_environment(mode, scratch)  # type: ignore[arg-type]
    if tuned:
        os.environ.update(TUNED)
    import ray
    from ray import serve

    from serving.monitoring.config import MonitoringConfig
    from serving.monitoring.wiring import run_monitored_service, stop_monitoring_service
    from serving.serve_config import ServeConfig

    config = ServeConfig(
        registry=registry_root,
        port=port,
        num_replicas=1,
        ray_actor_options={"num_cpus": 1},
        admin_token=None,
        max_batch_size=1 if tuned else 16,
    )
    ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        url = run_monitored_service(config, MonitoringConfig())
        if mode == "direct":
            url = f"http://127.0.0.1:{replica_http_port(environment)}"
        print(json.dumps({"url": url}), flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        stop_monitoring_service(config)
        ray.shutdown()


class Server:
    """One setup's server process."""

    def __init__(self, setup: str, registry_root: Path, scratch: Path) -> None:
        self.setup = setup
        port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--server",
                setup,
                str(port),
                "--registry",
                str(registry_root),
                "--scratch",
                str(scratch / setup),
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        if setup in SERVE_SETUPS:
            while True:
                line = self.process.stdout.readline()
                if not line:
                    raise RuntimeError(f"{setup} server exited")
                if line.startswith('{"url"'):
                    self.url = json.loads(line)["url"]
                    break
        else:
            self.url = f"http://127.0.0.1:{port}"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of every process of this server, by role."""
        import psutil

        by_role: dict[str, float] = defaultdict(float)
        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return {}
        for process in processes:
            try:
                times = process.cpu_times()
                title = " ".join(process.cmdline()[:2])
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            by_role[_role(title, process is root)] += times.user + times.system
        return dict(by_role)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def _role(title: str, is_root: bool) -> str:
    for needle, role in (
        ("ServeReplica", "replica"),
        ("ProxyActor", "proxy"),
        ("HAProxyManager", "proxy"),
        ("haproxy", "haproxy"),
        ("MonitoringService", "monitoring"),
    ):
        if needle in title:
            return role
    return "server" if is_root else "ray"


# --------------------------------------------------------------------------- measuring


def measure(
    servers: dict[str, Server], concurrency: list[int], seconds: float, rounds: int
) -> list[dict]:
    setups = list(servers)
    results = []
    for clients in concurrency:
        rows: dict[str, list[Row]] = {setup: [] for setup in setups}
        cpu: dict[str, dict[str, float]] = {setup: defaultdict(float) for setup in setups}
        for round_number in range(rounds):
            shift = round_number % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                before = servers[setup].cpu_seconds()
                row = asyncio.run(closed_loop(servers[setup].url, clients, 0.5, seconds))
                after = servers[setup].cpu_seconds()
                for role, value in after.items():
                    cpu[setup][role] += value - before.get(role, 0.0)
                cpu[setup]["requests"] += row.completed
                row.setup = setup
                rows[setup].append(row)
            print(
                f"  {clients:3d} clients round {round_number + 1}: "
                + "  ".join(f"{s} {rows[s][-1].requests_per_s:5.0f}" for s in setups),
                flush=True,
            )
        for setup in setups:
            latencies = np.concatenate([r.latencies_ms for r in rows[setup]] + [[np.nan]])
            latencies = latencies[:-1] if len(latencies) > 1 else latencies
            requests = max(1.0, cpu[setup].pop("requests"))
            results.append(
                {
                    "setup": setup,
                    "clients": clients,
                    "requests_per_s": float(np.mean([r.requests_per_s for r in rows[setup]])),
                    "p50_ms": float(np.percentile(latencies, 50)),
                    "p99_ms": float(np.percentile(latencies, 99)),
                    "errors": sum(r.errors for r in rows[setup]),
                    "cpu_ms_per_request": {
                        role: 1000.0 * value / requests
                        for role, value in sorted(cpu[setup].items())
                        if value > 0
                    },
                }
            )
    plain = {e["clients"]: e["requests_per_s"] for e in results if e["setup"] == "plain"}
    for entry in results:
        if entry["clients"] in plain:
            entry["over_plain"] = entry["requests_per_s"] / plain[entry["clients"]]
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "| setup | clients | requests/s | × plain | p50 ms | p99 ms | errors "
        "| server CPU ms/request (by process) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for e in sorted(results, key=lambda e: (SETUPS.index(e["setup"]), e["clients"])):
        cpu = e["cpu_ms_per_request"]
        total = sum(cpu.values())
        parts = ", ".join(f"{role} {value:.2f}" for role, value in cpu.items() if value >= 0.01)
        lines.append(
            f"| {e['setup']} | {e['clients']} | {e['requests_per_s']:.0f} "
            f"| {e.get('over_plain', float('nan')):.2f} | {e['p50_ms']:.1f} | {e['p99_ms']:.1f} "
            f"| {e['errors']} | {total:.2f} ({parts}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per slice")
    parser.add_argument("--rounds", type=int, default=3, help="slices per setup and client count")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--server", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.server is not None:
        setup, port = args.server[0], int(args.server[1])
        if setup == "plain":
            run_plain_server(port, args.registry)
        elif setup == "app":
            run_app_server(port, args.registry)
        else:
            run_serve_server(setup, port, args.registry, args.scratch)
        return
    with tempfile.TemporaryDirectory(prefix="trimtab-bench-serving-") as scratch_name:
        scratch = Path(scratch_name)
        registry_root = args.registry or build_registry(scratch)
        print(f"registry {registry_root}; load average {os.getloadavg()}", flush=True)
        servers: dict[str, Server] = {}
        try:
            for setup in args.setups:
                servers[setup] = Server(setup, registry_root, scratch)
            for server in servers.values():
                wait_ready(server.url)
                print(f"  {server.setup} ready at {server.url}", flush=True)
            results = measure(servers, args.concurrency, args.duration, args.rounds)
        finally:
            for server in servers.values():
                server.stop()
        print(f"load average {os.getloadavg()}")
        print()
        print(markdown(results))
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
