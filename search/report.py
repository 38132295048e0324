"""The study report: trials as Parquet, figures (PNG) and a one-page HTML report.

:func:`write_report` saves the data (``trials.parquet``, ``curves.parquet``) and renders;
:func:`regenerate_report` renders again from those files, the probe, the cost calibration and
the Optuna journal, with no Ray needed (``trimtab study report DIR``).

What the report teaches beyond the winner: instability against learning rate for each clipping
method (``instability_by_lr.png``: which methods keep which rates stable, and where runs
diverge), and Optuna's parameter importances for each objective (which knob mattered), shown
only when there are enough completed trials and the objective varies.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.report_plots import curves_plot, instability_by_learning_rate_plot, pareto_plot

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
                "objectives": objective_labels(result.spec.objectives.validation_loss),
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


def objective_labels(validation_loss: bool) -> list[str]:
    """The study's objectives in Optuna's order, as the importances section names them."""
    return ["instability", "cost", *(["validation loss"] if validation_loss else [])]


MIN_TRIALS_FOR_IMPORTANCES = 8
"""Fewer completed trials than this: importances would describe noise, so none are shown."""


def regenerate_report(directory: Path | str) -> Path:
    """Render ``report/pareto.png``, ``report/instability_by_lr.png`` and
    ``report/report.html`` from the saved files."""
    directory = Path(directory)
    out = directory / "report"
    table = pd.read_parquet(out / "trials.parquet")
    summary = json.loads((out / "summary.json").read_text())
    curves_path = out / "curves.parquet"
    curves = pd.read_parquet(curves_path) if curves_path.exists() else pd.DataFrame()
    cost = summary["cost"]
    figures = {
        "pareto": pareto_plot(table, cost),
        "instability_by_lr": instability_by_learning_rate_plot(table),
        "curves": curves_plot(curves) if not curves.empty else b"",
    }
    for name in ("pareto", "instability_by_lr"):
        if figures[name]:
            (out / f"{name}.png").write_bytes(figures[name])
    objectives = summary.get("objectives", objective_labels(False))
    importances = parameter_importances(directory, summary["name"], objectives)
    page = _html(
        summary,
        table,
        cost,
        _read_json(directory / "probe.json"),
        _read_json(directory / "cost_calibration.json"),
        importances,
        figures,
    )
    (out / "report.html").write_text(page)
    return out / "report.html"


def _read_json(path: Path) -> dict:
    """The file's JSON object; ``{}`` when it is missing or unreadable (the report renders
    without it)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        if path.exists():
            logger.warning("cannot read %s: %s", path, error)
        return {}
    return value if isinstance(value, dict) else {}


def parameter_importances(
    directory: Path, name: str, objectives: list[str]
) -> dict[str, dict[str, float] | str]:
    """For each objective, Optuna's fANOVA importances (seeded, so the report is stable) over
    the completed trials, or the reason none are shown: too few trials, or an objective that
    did not vary (nothing to attribute)."""
    journal = directory / "optuna.journal"
    if not journal.exists():
        return {}
    try:
        study = optuna.load_study(
            study_name=name, storage=JournalStorage(JournalFileBackend(str(journal)))
        )
    except (KeyError, ValueError) as error:
        logger.info("no Optuna study %s in %s: %s", name, journal, error)
        return {}
    completed = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCES:
        reason = (
            f"{len(completed)} completed trials (importances need {MIN_TRIALS_FOR_IMPORTANCES})"
        )
        return dict.fromkeys(objectives, reason)
    result: dict[str, dict[str, float] | str] = {}
    for index, objective in enumerate(objectives[: len(study.directions)]):
        values = {trial.values[index] for trial in completed}
        if len(values) < 2:
            result[objective] = f"every trial has the same value ({values.pop():.4g})"
            continue
        try:
            result[objective] = optuna.importance.get_param_importances(
                study,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda trial, i=index: trial.values[i],
            )
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            result[objective] = f"not computable: {error}"
    return result


def _img(png: bytes) -> str:
    if not png:
        return "<p>(no curves)</p>"
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _html(
    summary: dict,
    table: pd.DataFrame,
    cost: str,
    probe: dict,
    calibration: dict,
    importances: dict[str, dict[str, float] | str],
    figures: dict[str, bytes],
) -> str:
    columns = [
        c
        for c in (
            "trial_id",
            "settings",
            "instability_score",
            cost,
            "val_loss",
            "val_accuracy",
            "loss_spikes",
            "grad_norm_spikes",
            "clipped_fraction",
            "nonfinite_steps",
            "scaler_backoffs",
            "rewinds",
            "skipped_batches",
            "steps_lost",
            "loss_reduction",
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
<h2>Cost</h2>{_cost_html(cost, calibration)}
<h2>Pareto front</h2>{_img(figures["pareto"])}
<h2>Instability against learning rate, per clipping method</h2>
<p>Each trial marked by how it ended: feasible, infeasible (a constraint failed: too little
accuracy, stalled, too much memory) or diverged (stopped early).</p>
{_img(figures["instability_by_lr"])}
<h2>Parameter importances per objective (Optuna, fANOVA)</h2>{_importances_html(importances)}
<h2>Trials</h2>{table[columns].to_html(index=False, float_format=lambda v: f"{v:.4g}")}
<h2>Loss and gradient-norm curves</h2>{_img(figures["curves"])}
<h2>Gradient probe</h2>{probe_html}
</body></html>
"""


def _cost_html(cost: str, calibration: dict) -> str:
    """Which cost metric the study minimised, and where its per-step costs were measured."""
    text = f"<p>Cost objective: <b>{html.escape(cost)}</b>."
    if not calibration:
        return text + " No cost calibration in the study directory: costs follow wall time.</p>"
    seconds = calibration.get("step_seconds", {})
    rows = "".join(
        f"<tr><td>{html.escape(str(key))}</td><td>{float(value) * 1e3:.3f}</td></tr>"
        for key, value in sorted(seconds.items())
    )
    warnings = "".join(f"<li>{html.escape(str(w))}</li>" for w in calibration.get("warnings", []))
    return (
        f"{text} Per-step costs measured on <b>{html.escape(str(calibration.get('device')))}</b> "
        f"({html.escape(str(calibration.get('clock', '')))}); a trial is charged its steps x "
        f"its setting's cost.</p>"
        + (f"<ul>{warnings}</ul>" if warnings else "")
        + f"<table><tr><th>setting</th><th>ms per step</th></tr>{rows}</table>"
    )


def _importances_html(importances: dict[str, dict[str, float] | str]) -> str:
    if not importances:
        return "<p>(no Optuna journal)</p>"
    parts = []
    for objective, values in importances.items():
        if isinstance(values, str):
            parts.append(
                f"<h3>{html.escape(objective)}</h3><p>not shown: {html.escape(values)}</p>"
            )
            continue
        items = "".join(
            f"<li>{html.escape(name)}: {value:.3f}</li>"
            for name, value in sorted(values.items(), key=lambda item: -item[1])
        )
        parts.append(f"<h3>{html.escape(objective)}</h3><ol>{items}</ol>")
    return "".join(parts)
