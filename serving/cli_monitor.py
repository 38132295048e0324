"""``trimtab monitor``: the monitoring summary of a running service, on the terminal.

Example::

    trimtab monitor --url http://127.0.0.1:8000           # a readable report
    trimtab monitor --url http://127.0.0.1:8000 --json    # the JSON of GET /monitoring/summary
"""

from __future__ import annotations

import json
from typing import Any

import click


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render_summary(summary: dict[str, Any]) -> str:
    """The summary as a short text report (what ``trimtab monitor`` prints)."""
    labels = summary["labels"]
    canary = summary["canary"]
    lines = [
        f"champion: version {summary.get('champion')}   window: {summary['window_size']} rows   "
        f"label retention: {summary['retention_s']:g} s",
        f"labels: {labels['joined']} joined, {labels['duplicate']} duplicate, "
        f"{labels['late']} late, {labels['unknown']} unknown, {labels['invalid']} invalid; "
        f"{labels['pending_predictions']} predictions awaiting labels, "
        f"{labels.get('held_labels', 0)} labels awaiting their predictions",
    ]
    if canary["status"] != "idle":
        reasons = "; ".join(canary["reasons"]) or "-"
        lines.append(
            f"canary: version {canary['version']} {canary['status']} "
            f"(share {canary['share']:.0%}, last decision {canary['last_decision'] or '-'}): "
            f"{reasons}"
        )
    if summary.get("dropped_observations"):
        lines.append(f"dropped observations: {summary['dropped_observations']}")
    for key, entry in sorted(summary["versions"].items(), key=lambda item: int(item[0])):
        online, drift, latency = entry["online"], entry["drift"], entry["latency_s"]
        role = f" ({entry['role']})" if entry.get("role") else ""
        lines += [
            "",
            f"version {key}{role}: {entry['requests']} requests, {entry['rows']} rows "
            f"({entry['window_rows']} in the window)",
            f"  latency p50/p99: {_number(latency['p50'], 4)} / {_number(latency['p99'], 4)} s",
            f"  online ({online['labeled']} labeled): accuracy {_percent(online['accuracy'])} "
            f"(offline {_percent(online['offline_accuracy'])}), macro F1 "
            f"{_number(online['macro_f1'])}, precision {_number(online['macro_precision'])}, "
            f"recall {_number(online['macro_recall'])}, ECE {_number(online['ece'])}",
            f"  drift ({drift['status'] or 'too few rows'}): max PSI {_number(drift['max_psi'])}, "
            f"{_percent(drift['drifted_share'])} of features above "
            f"{drift['thresholds']['psi_alert']:g}, prediction PSI "
            f"{_number(drift['prediction_psi'])}",
        ]
        if drift["drifted_features"]:
            shown = ", ".join(drift["drifted_features"][:8])
            more = len(drift["drifted_features"]) - 8
            lines.append(f"  drifted: {shown}{f' and {more} more' if more > 0 else ''}")
        if "ks" in drift and drift["ks"]["drifted_share"] is not None:
            lines.append(
                f"  KS: {_percent(drift['ks']['drifted_share'])} of features with p < "
                f"{drift['ks']['alpha']:g}"
            )
        for name, metrics in entry["slices"].items():
            lines.append(
                f"  slice {name} ({metrics['labeled']} labeled): accuracy "
                f"{_percent(metrics['accuracy'])}, macro F1 {_number(metrics['macro_f1'])}, "
                f"ECE {_number(metrics['ece'])}"
            )
    return "\n".join(lines)


@click.command("monitor")
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of the running service (trimtab serve).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary's JSON.")
@click.option("--no-ks", is_flag=True, help="Skip the KS tests (faster on many features).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1))
def monitor(url: str, as_json: bool, no_ks: bool, timeout: float) -> None:
    """Print the monitoring summary of a running service: drift, online accuracy,
    calibration and slices per model version, and the canary."""
    import httpx

    endpoint = url.rstrip("/") + "/monitoring/summary"
    try:
        response = httpx.get(endpoint, params={"ks": str(not no_ks).lower()}, timeout=timeout)
    except httpx.HTTPError as error:
        raise click.UsageError(f"cannot reach {endpoint}: {error}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise click.UsageError(f"{endpoint} answered {response.status_code}: {message}")
    summary = response.json()
    click.echo(json.dumps(summary, indent=2) if as_json else render_summary(summary))
