"""The study report: trials as Parquet, a Pareto plot (PNG) and a one-page HTML report.

:func:`write_report` saves the data (``trials.parquet``, ``curves.parquet``) and renders;
:func:`regenerate_report` renders again from those files, the probe and the Optuna journal,
with no Ray needed (``trimtab study report DIR``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

logger = logging.getLogger(__name__)

CURVE_COLUMNS = (
    "step",
    "train_loss",
    "val_loss",
    "grad_norm_p50",
    "grad_norm_p95",
    "grad_norm_max",
)


def write_report(result: Any) -> Path:
    """Save the trial table and curves of a :class:`~search.study.StudyResult`, then render."""
    out = result.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = result.trials.copy()
    if "train_config" in table:
        table["train_config"] = table["train_config"].map(json.dumps)
    table.to_parquet(out / "trials.parquet", index=False)
    curves = []
    for trial in result.tune:
        frame = trial.metrics_dataframe
        if frame is None or frame.empty:
            continue
        present = [c for c in CURVE_COLUMNS if c in frame]
        part = frame[present].copy()
        part["trial_id"] = str((trial.metrics or {}).get("trial_id", ""))
        curves.append(part)
    if curves:
        pd.concat(curves, ignore_index=True).to_parquet(out / "curves.parquet", index=False)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "name": result.spec.name,
                "cost": result.spec.objectives.cost,
                "winner": None if result.winner is None else str(result.winner["trial_id"]),
                "winner_reason": result.winner_reason,
                "final_checkpoint": str(result.final_checkpoint)
                if result.final_checkpoint
                else None,
            },
            indent=2,
        )
    )
    return regenerate_report(result.directory)


def regenerate_report(directory: Path | str) -> Path:
    """Render ``report/pareto.png`` and ``report/report.html`` from the saved files."""
    directory = Path(directory)
    out = directory / "report"
    table = pd.read_parquet(out / "trials.parquet")
    summary = json.loads((out / "summary.json").read_text())
    curves_path = out / "curves.parquet"
    curves = pd.read_parquet(curves_path) if curves_path.exists() else pd.DataFrame()
    probe_path = directory / "probe.json"
    probe = json.loads(probe_path.read_text()) if probe_path.exists() else {}
    cost = summary["cost"]
    pareto_png = _pareto_plot(table, cost)
    (out / "pareto.png").write_bytes(pareto_png)
    curves_png = _curves_plot(curves) if not curves.empty else b""
    importances = _importances(directory, summary["name"])
    page = _html(summary, table, cost, probe, importances, pareto_png, curves_png)
    (out / "report.html").write_text(page)
    return out / "report.html"


def _pareto_plot(table: pd.DataFrame, cost: str) -> bytes:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    if len(table):
        groups = [
            (table["feasible"] & ~table["on_front"], "feasible", "tab:blue", "o"),
            (table["on_front"], "Pareto front", "tab:green", "o"),
            (~table["feasible"] & (table["diverged"] < 1), "infeasible", "tab:orange", "s"),
            (table["diverged"] >= 1, "diverged", "tab:red", "x"),
        ]
        for mask, label, color, marker in groups:
            part = table[mask]
            if len(part):
                axes.scatter(
                    part[cost], part["instability_score"], label=label, c=color, marker=marker, s=50
                )
        front = table[table["on_front"]].sort_values(cost)
        if len(front) > 1:
            axes.plot(front[cost], front["instability_score"], c="tab:green", lw=1)
        winner = table[table["winner"]]
        if len(winner):
            axes.scatter(
                winner[cost],
                winner["instability_score"],
                s=250,
                facecolors="none",
                edgecolors="black",
                linewidths=2,
                label="winner",
            )
    axes.set_xlabel(cost.replace("_", " "))
    axes.set_ylabel("instability score (0 = smooth, 1 = diverged)")
    axes.set_title("Trials: stability vs cost")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _curves_plot(curves: pd.DataFrame) -> bytes:
    figure, (loss_axes, norm_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for trial_id, part in curves.groupby("trial_id"):
        part = part.sort_values("step")
        loss_axes.plot(part["step"], part["train_loss"].clip(upper=10), label=trial_id, lw=1)
        if "grad_norm_p95" in part:
            norm_axes.plot(part["step"], part["grad_norm_p95"], label=trial_id, lw=1)
    loss_axes.set(xlabel="step", ylabel="train loss (clipped at 10)", title="Loss")
    norm_axes.set(
        xlabel="step", ylabel="gradient norm p95 (so far)", title="Gradient norm", yscale="log"
    )
    loss_axes.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    return _png(figure)


def _importances(directory: Path, name: str) -> dict[str, dict[str, float]]:
    journal = directory / "optuna.journal"
    if not journal.exists():
        return {}
    try:
        study = optuna.load_study(
            study_name=name, storage=JournalStorage(JournalFileBackend(str(journal)))
        )
        result = {}
        for index, objective in enumerate(("instability", "cost")):
            result[objective] = optuna.importance.get_param_importances(
                study, target=lambda trial, i=index: trial.values[i]
            )
        return result
    except (ValueError, RuntimeError, ZeroDivisionError) as error:  # too few trials, no spread
        logger.info("no parameter importances: %s", error)
        return {}


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _img(png: bytes) -> str:
    if not png:
        return "<p>(no curves)</p>"
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _html(
    summary: dict,
    table: pd.DataFrame,
    cost: str,
    probe: dict,
    importances: dict[str, dict[str, float]],
    pareto_png: bytes,
    curves_png: bytes,
) -> str:
    columns = [
        c
        for c in (
            "trial_id",
            "settings",
            "instability_score",
            cost,
            "val_accuracy",
            "loss_spikes",
            "clipped_fraction",
            "nonfinite_steps",
            "step",
            "steps_planned",
            "feasible",
            "diverged",
            "on_front",
            "winner",
        )
        if c in table
    ]
    winner = summary.get("winner")
    winner_row = table[table["trial_id"] == winner] if winner else table.iloc[0:0]
    winner_text = (
        f"<b>{html.escape(str(winner))}</b>: {html.escape(winner_row['settings'].iloc[0])} — "
        f"{html.escape(summary['winner_reason'])}"
        if len(winner_row)
        else "no feasible trial"
    )
    saved = 0.0
    if "steps_planned" in table and "step" in table:
        stopped = table[table["diverged"] >= 1]
        saved = float((stopped["steps_planned"] - stopped["step"]).sum())
    importance_html = (
        "".join(
            f"<h3>{objective}</h3><ul>"
            + "".join(f"<li>{html.escape(k)}: {v:.3f}</li>" for k, v in values.items())
            + "</ul>"
            for objective, values in importances.items()
        )
        or "<p>(not enough completed trials)</p>"
    )
    probe_html = (
        f"<p>{probe.get('steps')} unclipped steps. max_norm searched in "
        f"{probe.get('max_norm_range')}, clip_value in {probe.get('clip_value_range')}.</p>"
        f"<pre>{html.escape(json.dumps(probe.get('norm_quantiles', {}), indent=1))}</pre>"
        if probe
        else "<p>(no probe)</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>trimtab study {html.escape(summary["name"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px}}</style>
</head><body>
<h1>Study {html.escape(summary["name"])}</h1>
<h2>Winner</h2><p>{winner_text}</p>
<p>{len(table)} trials, {int(table["feasible"].sum()) if len(table) else 0} feasible,
{int((table["diverged"] >= 1).sum()) if len(table) else 0} diverged and stopped early
({saved:.0f} training steps saved).</p>
<h2>Pareto front</h2>{_img(pareto_png)}
<h2>Trials</h2>{table[columns].to_html(index=False, float_format=lambda v: f"{v:.4g}")}
<h2>Loss and gradient-norm curves</h2>{_img(curves_png)}
<h2>Gradient probe</h2>{probe_html}
<h2>Parameter importances per objective (Optuna)</h2>{importance_html}
</body></html>
"""
