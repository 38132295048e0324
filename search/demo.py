"""``trimtab demo``: the whole path on the embedded stress workload, with real components.

The study is a short variant of ``studies/stress.yaml`` (the same one as ``studies/demo.yaml``):
a deep ReLU RNN on generated sequences, where a good share of the search space really diverges,
spikes or stalls, so the search has a trade-off to find. Path: study (Ray Tune + Optuna, trials
in-process two at a time) → Pareto front and winner → final fit of the winner with 2
data-parallel Ray Train workers → ONNX export + INT8 gate → registry → Ray Serve on 127.0.0.1 →
sample HTTP requests compared with PyTorch → delayed labels and the monitoring summary → the
front and the winner's reason again → keeps serving until interrupted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np
import pandas as pd
import torch

from search.spec import StudySpec


@dataclass(frozen=True)
class DemoOutcome:
    url: str
    version: int
    max_probability_difference: float
    labels_match: bool
    report: Path
    front_size: int
    """Points on the study's Pareto front (feasible, non-dominated)."""
    winner_reason: str
    unstable_trials: int
    """Trials that diverged or scored instability >= 0.3."""


DEMO_TRIALS = 16
UNSTABLE_SCORE = 0.3
"""Instability score from which a trial counts as unstable (as in docs/benchmarks.md)."""


def demo_spec(storage: Path, trials: int = DEMO_TRIALS, workers: int = 1) -> StudySpec:
    """The demo's study: ``studies/demo.yaml`` with ``storage``, ``trials`` and ``workers``.

    A short variant of ``studies/stress.yaml`` (same model, data and space; 16 trials, TPE,
    a 2-worker final fit): about 40 % of that space diverges, spikes or stalls, so the front
    has settings that trade stability against cost and validation loss.
    """
    return StudySpec(
        name="demo",
        storage=str(storage),
        data={"source": "stress"},
        model={
            "name": "rnn",
            "options": {
                "tokens": 16,
                "width": 48,
                "depth": 3,
                "nonlinearity": "relu",
                "recurrent_scale": 1.5,
            },
        },
        training={
            "epochs": 100,
            "max_steps": 400,
            "global_batch_size": 16,
            "learning_rate": 0.003,
            "warmup_steps": 20,
            "report_every_steps": 10,
            "checkpoint_every_steps": 200,
            "num_workers": workers,
        },
        search={
            "num_trials": trials,
            "max_concurrent_trials": 2 if workers == 1 else 1,
            "sampler": "tpe",
            "seed": 0,
            "space": {
                "clipping": {"methods": ["none", "norm", "value", "agc", "autoclip", "zclip"]},
                "precision": ["fp32", "bf16", "fp16"],
                "activation_checkpointing": [0, 2],
                "learning_rate": {"low": 0.005, "high": 0.5},
                "optimizer": ["adamw", "sgd"],
                "warmup_steps": [0, 20],
            },
            "probe": {"steps": 40},
        },
        objectives={"cost": "cost_to_target_dollars", "validation_loss": True},
        constraints={"min_val_accuracy": 0.75},
        selection={"policy": "knee"},
        final_fit={"enabled": True, "num_workers": 2},
    )


def run_demo(
    storage: Path,
    *,
    port: int = 8000,
    keep_serving: bool = True,
    trials: int = DEMO_TRIALS,
    workers: int = 1,
) -> DemoOutcome:
    """Run the demo (see the module docstring) in ``storage``; ``workers`` per trial (1: each
    trial trains in-process, two at a time; more: each trial is a Ray Train run)."""
    import ray

    from search.console import ProgressPrinter
    from search.study import Study
    from serving.ingress import DEFAULT_INGRESS, apply_ingress_environment
    from serving.registry import Registry
    from serving.ship import ship
    from train_loops.checkpoint import load_model_for_export

    if not ray.is_initialized():  # the Ray the study starts serves through trimtab's ingress
        apply_ingress_environment(DEFAULT_INGRESS, storage)
    started = time.monotonic()
    spec = demo_spec(storage.resolve(), trials, workers)
    how = "in-process" if workers == 1 else f"each a {workers}-worker Ray Train run"
    click.echo(
        f"== 1/5 study (studies/demo.yaml): {trials} trials ({how}) on a deep ReLU RNN that "
        "diverges, spikes or stalls for much of its search space =="
    )
    result = Study(spec, callbacks=[ProgressPrinter(trials)]).run()
    click.echo(_study_counts(result.trials))
    if result.final_checkpoint is None:
        raise click.ClickException("the demo study found no feasible winner")
    click.echo(f"winner: {result.winner['trial_id']} {result.winner['settings']}")

    click.echo(
        "\n== 2/5 export the winner's final fit (2 Ray Train workers): ONNX → INT8 → gate =="
    )
    model, dataset, training_config, lineage = load_model_for_export(result.final_checkpoint)
    lineage = {**lineage, "study": spec.name, "trial": str(result.winner["trial_id"])}
    registry = Registry(storage.resolve() / "registry")
    version = ship(
        model,
        dataset,
        registry,
        model_name=spec.name,
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

    click.echo("\n== 3/5 serve it with Ray Serve ==")
    url = _serve(registry.root, port)
    click.echo(f"serving at {url}")

    click.echo("\n== 4/5 sample requests ==")
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

    click.echo("\n== 5/5 what the search found ==")
    click.echo(_study_counts(result.trials))
    click.echo(front_text(result))
    click.echo(f"winner: {result.winner['trial_id']} {result.winner['settings']}")
    click.echo(f"why:    {result.winner_reason}")
    click.echo(
        f"        (policy {spec.selection.policy!r} over instability and "
        f"{spec.objectives.cost}; a lower validation loss wins within its tolerance)"
    )
    report = result.directory / "report" / "report.html"
    click.echo(f"study report (instability against learning rate, importances): {report}")
    click.echo(
        f"try: curl -s -X POST {url}/predict -H 'content-type: application/json' -d '{sample}'"
    )
    click.echo(f"demo took {time.monotonic() - started:.0f} s")
    outcome = DemoOutcome(
        url,
        version.version,
        difference,
        labels_match,
        report,
        front_size=len(result.pareto_front),
        winner_reason=result.winner_reason,
        unstable_trials=unstable_count(result.trials),
    )
    if keep_serving:
        click.echo("serving until Ctrl-C ...")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    _shutdown(registry.root, port)
    return outcome


def unstable_count(trials: pd.DataFrame) -> int:
    """Trials that diverged or whose instability score reached :data:`UNSTABLE_SCORE`."""
    if trials.empty:
        return 0
    unstable = (trials["diverged"] > 0) | (trials["instability_score"] >= UNSTABLE_SCORE)
    return int(unstable.sum())


def _study_counts(trials: pd.DataFrame) -> str:
    feasible = int(trials["feasible"].sum()) if len(trials) else 0
    diverged = int((trials["diverged"] > 0).sum()) if len(trials) else 0
    return (
        f"{len(trials)} trials: {unstable_count(trials)} unstable (diverged or instability "
        f">= {UNSTABLE_SCORE}), {diverged} of them diverged and stopped early; {feasible} feasible"
    )


def front_text(result: Any) -> str:
    """The Pareto front as a table, in the study's objectives, the winner marked ``*``."""
    front = result.pareto_front
    cost = result.spec.objectives.cost
    if front.empty:
        return "Pareto front: empty (no feasible trial)"
    columns = {
        "trial_id": "trial",
        "instability_score": "instability",
        cost: cost,
        "val_loss": "val_loss",
        "val_accuracy": "val_acc",
        "settings": "settings",
    }
    table = front.sort_values(["instability_score", cost])[list(columns)].rename(columns=columns)
    winner = str(result.winner["trial_id"]) if result.winner is not None else None
    table.insert(0, "", ["*" if str(key) == winner else "" for key in table["trial"]])
    formats = {
        "instability": "{:.3f}".format,
        cost: "${:.3g}".format,
        "val_loss": "{:.3f}".format,
        "val_acc": "{:.3f}".format,
    }
    objectives = ", ".join(
        ["instability", cost] + (["val_loss"] * bool(result.spec.objectives.validation_loss))
    )
    return (
        f"Pareto front: {len(front)} points (feasible, non-dominated in {objectives}; all "
        f"minimised)\n" + table.to_string(index=False, formatters=formats)
    )


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
