"""``trimtab demo``: the whole path on the embedded digits data, with real components.

study (Ray Tune + Optuna; each trial a 2-worker Ray Train run) → Pareto front and winner →
final fit of the winner with 2 data-parallel workers → ONNX export + INT8 gate → registry →
Ray Serve on 127.0.0.1 → sample HTTP requests compared with PyTorch → delayed labels and the
monitoring summary (when monitoring is available) → keeps serving until interrupted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import numpy as np
import torch

from search.spec import StudySpec


@dataclass(frozen=True)
class DemoOutcome:
    url: str
    version: int
    max_probability_difference: float
    labels_match: bool
    report: Path


def demo_spec(storage: Path, trials: int, workers: int) -> StudySpec:
    return StudySpec(
        name="demo",
        storage=str(storage),
        training={
            "epochs": 4,
            "num_workers": workers,
            "report_every_steps": 25,
            "checkpoint_every_steps": 50,
            "global_batch_size": 64,
        },
        search={
            "num_trials": trials,
            "max_concurrent_trials": 1,
            "probe": {"steps": 20},
            "space": {"activation_checkpointing": [0]},
        },
        constraints={"min_val_accuracy": 0.85},
        final_fit={"enabled": True, "num_workers": 2},
    )


def run_demo(
    storage: Path,
    *,
    port: int = 8000,
    keep_serving: bool = True,
    trials: int = 2,
    workers: int = 2,
) -> DemoOutcome:
    import ray

    from search.console import ProgressPrinter, print_result
    from search.study import Study
    from serving.ingress import DEFAULT_INGRESS, apply_ingress_environment
    from serving.registry import Registry
    from serving.ship import ship
    from train_loops.checkpoint import load_model_for_export

    if not ray.is_initialized():  # the Ray the study starts serves through trimtab's ingress
        apply_ingress_environment(DEFAULT_INGRESS, storage)
    started = time.monotonic()
    spec = demo_spec(storage.resolve(), trials, workers)
    click.echo(f"== 1/4 study: {trials} trials, each a {workers}-worker Ray Train run ==")
    result = Study(spec, callbacks=[ProgressPrinter(trials)]).run()
    print_result(result)
    if result.final_checkpoint is None:
        raise click.ClickException("the demo study found no feasible winner")

    click.echo("\n== 2/4 export the winner's final fit: ONNX → INT8 → gate → registry ==")
    model, dataset, training_config, lineage = load_model_for_export(result.final_checkpoint)
    lineage = {**lineage, "study": spec.name, "trial": str(result.winner["trial_id"])}
    registry = Registry(storage.resolve() / "registry")
    version = ship(
        model,
        dataset,
        registry,
        model_name="digits",
        lineage=lineage,
        training_config=training_config,
        quantization="dynamic",
        alias="champion",
    )
    gate = version.manifest.gate
    click.echo(
        f"registered version {version.version} ({version.manifest.quantization}); "
        f"gate: {gate.get('reason', gate.get('decision', ''))}"
    )

    click.echo("\n== 3/4 serve it with Ray Serve ==")
    url = _serve(registry.root, port)
    click.echo(f"serving at {url}")

    click.echo("\n== 4/4 sample requests ==")
    features, labels = dataset.load("test")
    rows = features[:8]
    response = httpx.post(
        f"{url}/predict",
        json={"instances": rows.tolist()},
        headers={"x-request-id": "demo-1"},
        timeout=30,
    )
    response.raise_for_status()
    answer = response.json()
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(rows)), dim=1).numpy()
    served = np.asarray(answer["probabilities"], dtype=np.float32)
    difference = float(np.abs(served - expected).max())
    expected_names = [dataset.class_names[i] for i in expected.argmax(1)]
    labels_match = answer["labels"] == expected_names
    sample = json.dumps({"instances": [rows[0].tolist()]})
    click.echo(f"request:  POST {url}/predict {sample[:90]}...")
    click.echo(
        f"response: labels={answer['labels']} version={answer['model_version']} "
        f"request_id={answer['request_id']}"
    )
    click.echo(f"PyTorch:  labels={expected_names} (true {labels[:8].tolist()})")
    click.echo(
        f"served vs PyTorch: labels {'match' if labels_match else 'DIFFER'}, "
        f"max |Δprobability| = {difference:.2e} ({version.manifest.quantization} model)"
    )
    _monitoring_sample(url, features, labels)
    report = result.directory / "report" / "report.html"
    click.echo(f"\nstudy report: {report}")
    click.echo(
        f"try: curl -s -X POST {url}/predict -H 'content-type: application/json' -d '{sample}'"
    )
    click.echo(f"demo took {time.monotonic() - started:.0f} s")
    outcome = DemoOutcome(url, version.version, difference, labels_match, report)
    if keep_serving:
        click.echo("serving until Ctrl-C ...")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    _shutdown(registry.root, port)
    return outcome


def _serve_config(registry_root: Path, port: int):
    from serving.serve_config import ServeConfig

    return ServeConfig(
        registry=registry_root, alias="champion", port=port, ray_actor_options={"num_cpus": 0.5}
    )


def _serve(registry_root: Path, port: int) -> str:
    from serving.monitoring.config import MonitoringConfig
    from serving.monitoring.wiring import run_monitored_service

    url = run_monitored_service(_serve_config(registry_root, port), MonitoringConfig())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise click.ClickException(f"the service at {url} did not become ready in 120 s")


def _monitoring_sample(url: str, features: np.ndarray, labels: np.ndarray) -> None:
    """Send labelled traffic and delayed labels, then print the monitoring summary."""
    ids = []
    for start in range(0, 200, 20):
        rows = features[start : start + 20]
        reply = httpx.post(
            f"{url}/predict",
            json={"instances": rows.tolist()},
            headers={"x-request-id": f"demo-batch-{start}"},
            timeout=30,
        )
        reply.raise_for_status()
        ids.append((reply.json()["request_id"], labels[start : start + 20]))
    labelled = httpx.post(
        f"{url}/labels",
        json={
            "labels": [
                {"id": request_id, "label": int(label), "row": row}
                for request_id, batch in reversed(ids)  # delayed, out of order
                for row, label in enumerate(batch)
            ]
        },
        timeout=30,
    )
    summary = httpx.get(f"{url}/monitoring/summary", timeout=30)
    labelled.raise_for_status()
    summary.raise_for_status()
    from serving.cli_monitor import render_summary

    click.echo(f"delayed labels: {labelled.json()}")
    click.echo("monitoring summary (GET /monitoring/summary, as `trimtab monitor` prints it):")
    click.echo(render_summary(summary.json()))


def _shutdown(registry_root: Path, port: int) -> None:
    from ray import serve

    from serving.monitoring.wiring import stop_monitoring_service

    serve.shutdown()
    stop_monitoring_service(_serve_config(registry_root, port))
