"""Throughput and latency of the inference service, beside what the model alone can do.

Measures, on this machine, for one replica:

- the in-process onnxruntime ceiling (rows/s at batch 1 and 64, one intra-op thread as
  served),
- Ray Serve with dynamic batching (``max_batch_size=16``) and without (``max_batch_size=1``),
- Ray Serve with an empty route (parse the body, return): Serve's own per-request cost,
- the same FastAPI app under plain uvicorn (one worker, no Serve, no batching),

with 1, 16 and 64 concurrent closed-loop clients, each posting one row to ``/predict``.
The client (aiohttp) runs on the same machine and takes CPU from the server: on a
2-core machine read the numbers as relative.

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_serving.py [--registry DIR]
        [--duration 8] [--concurrency 1 16 64] [--out results.json]

Without ``--registry`` it trains the default digits MLP into a temporary registry first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))


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


def free_port(start: int = 20000) -> int:
    for port in range(start, 40000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


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


def onnxruntime_ceiling(registry_root: Path, alias: str, seconds: float) -> list[dict]:
    from serving.inference import load_model
    from serving.registry import Registry

    model = load_model(Registry(registry_root).get(alias), intra_op_num_threads=1)
    results = []
    for batch in (1, 64):
        features = np.random.default_rng(0).random((batch, model.num_features), np.float32)
        calls = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.run(features)
            calls += 1
        elapsed = time.perf_counter() - started
        results.append({"batch": batch, "rows_per_s": calls * batch / elapsed})
    return results


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
    )


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
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


def measure(setup: str, url: str, concurrency: list[int], seconds: float) -> list[Row]:
    rows = []
    for clients in concurrency:
        row = asyncio.run(closed_loop(url, clients, warmup_s=1.0, seconds=seconds))
        row.setup = setup
        print(
            f"  {setup:28s} {clients:3d} clients: {row.requests_per_s:7.0f} req/s  "
            f"p50 {row.p50_ms:6.1f} ms  p99 {row.p99_ms:6.1f} ms  errors {row.errors}",
            flush=True,
        )
        rows.append(row)
    return rows


def bench_serve(
    registry_root: Path, alias: str, concurrency: list[int], seconds: float, overrides: dict
) -> list[Row]:
    import ray
    from ray import serve

    from serving.app import run_service
    from serving.serve_config import ServeConfig

    ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        port = free_port()
        for label, batch_size in (("Serve, batching (16)", 16), ("Serve, no batching", 1)):
            config = ServeConfig(
                registry=registry_root,
                alias=alias,
                port=port,
                num_replicas=1,
                max_batch_size=batch_size,
                ray_actor_options={"num_cpus": 1},
                admin_token=None,
                **overrides,
            )
            url = run_service(config)
            wait_ready(url)
            rows += measure(label, url, concurrency, seconds)
            serve.delete(config.app_name)
        serve.run(_empty_route_app(), name="empty", route_prefix="/empty", blocking=False)
        rows += measure("Serve, empty route (no model)", f"{url}/empty", concurrency, seconds)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _empty_route_app():
    """Serve's own cost: the same transport to a route that parses the body and returns."""
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @app.post("/predict")
    async def predict(body: dict) -> dict:
        return {"rows": len(body["instances"])}

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    deployment = serve.deployment(
        serve.ingress(app)(type("EmptyRoute", (), {})),
        max_ongoing_requests=128,
        ray_actor_options={"num_cpus": 1},
    )
    return deployment.bind()


def bench_uvicorn(
    registry_root: Path, alias: str, concurrency: list[int], seconds: float
) -> list[Row]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--uvicorn-server",
            str(port),
            "--registry",
            str(registry_root),
            "--alias",
            alias,
        ],
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        return measure("uvicorn + FastAPI (1 worker)", url, concurrency, seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_uvicorn_server(port: int, registry_root: Path, alias: str) -> None:
    """The baseline: the same FastAPI app and model, no Ray Serve, no batching."""
    import uvicorn

    from serving.http_api import create_http_app
    from serving.inference import ModelHolder
    from serving.registry import Registry
    from serving.serve_config import ServeConfig

    config = ServeConfig(registry=registry_root, alias=alias, port=port, admin_token=None)
    holder = ModelHolder(Registry(registry_root), alias)
    holder.load()
    app = create_http_app(holder, config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def markdown(ceiling: list[dict], rows: list[Row]) -> str:
    lines = [
        "| setup | clients | requests/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.setup} | {row.clients} | {row.requests_per_s:.0f} | {row.p50_ms:.1f} | "
            f"{row.p99_ms:.1f} | {row.errors} |"
        )
    for entry in ceiling:
        lines.append(
            f"| onnxruntime in-process, batch {entry['batch']} (rows/s) | - | "
            f"{entry['rows_per_s']:.0f} | - | - | - |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--max-ongoing-requests", type=int, default=None, help="[ServeConfig's default]"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--uvicorn-server", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.uvicorn_server is not None:
        run_uvicorn_server(args.uvicorn_server, args.registry, args.alias)
        return
    with tempfile.TemporaryDirectory(prefix="trimtab-bench-") as scratch:
        registry_root = args.registry or build_registry(Path(scratch))
        print(f"registry {registry_root}, alias {args.alias}; load average {os.getloadavg()}")
        ceiling = onnxruntime_ceiling(registry_root, args.alias, seconds=3.0)
        print(f"  onnxruntime in-process: {ceiling}", flush=True)
        overrides = {}
        if args.max_ongoing_requests is not None:
            overrides["max_ongoing_requests"] = args.max_ongoing_requests
        rows = bench_serve(registry_root, args.alias, args.concurrency, args.duration, overrides)
        rows += bench_uvicorn(registry_root, args.alias, args.concurrency, args.duration)
        print()
        print(markdown(ceiling, rows))
        if args.out is not None:
            args.out.write_text(
                json.dumps(
                    {"onnxruntime": ceiling, "http": [asdict(row) for row in rows]}, indent=2
                )
            )


if __name__ == "__main__":
    main()
