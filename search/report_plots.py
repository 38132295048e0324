"""The study report's figures, each rendered to PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def pareto_plot(table: pd.DataFrame, cost: str) -> bytes:
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
    return png(figure)


def curves_plot(curves: pd.DataFrame) -> bytes:
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
    return png(figure)


OUTCOMES = (
    ("feasible", "tab:blue", "o"),
    ("infeasible", "tab:orange", "s"),
    ("diverged", "tab:red", "x"),
)
"""How a trial ended, as the instability plot marks it (label, colour, marker)."""


def trial_outcome(table: pd.DataFrame) -> pd.Series:
    """``diverged``, ``infeasible`` or ``feasible`` for each row of a trial table."""
    outcome = pd.Series("infeasible", index=table.index)
    outcome[table["feasible"].astype(bool)] = "feasible"
    outcome[table["diverged"] >= 1] = "diverged"
    return outcome


def instability_by_learning_rate_plot(table: pd.DataFrame) -> bytes:
    """One panel per clipping method: instability score against learning rate, each trial
    marked feasible, infeasible or diverged. Empty bytes when the table has no learning-rate
    or clip-method column (the study did not search them)."""
    if not {"param_learning_rate", "param_clip_method"} <= set(table.columns) or table.empty:
        return b""
    methods = sorted(table["param_clip_method"].dropna().unique())
    columns = min(3, len(methods))
    rows = math.ceil(len(methods) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3.2 * rows), sharex=True, sharey=True, squeeze=False
    )
    outcome = trial_outcome(table)
    low, high = table["param_learning_rate"].min(), table["param_learning_rate"].max()
    for panel, method in zip(axes.flat, methods, strict=False):
        mine = table["param_clip_method"] == method
        for label, color, marker in OUTCOMES:
            part = table[mine & (outcome == label)]
            if len(part):
                panel.scatter(
                    part["param_learning_rate"],
                    part["instability_score"],
                    c=color,
                    marker=marker,
                    s=40,
                    label=f"{label} ({len(part)})",
                )
        panel.set_title(f"clip: {method} ({int(mine.sum())} trials)", fontsize=10)
        panel.set_xscale("log")
        panel.set_xlim(low / 1.5, high * 1.5)
        panel.set_ylim(-0.05, 1.05)
        panel.axhline(0.3, color="grey", lw=0.5, ls="--")
        panel.legend(fontsize=7, loc="upper left")
    for panel in axes.flat[len(methods) :]:
        panel.set_visible(False)
    for panel in axes[-1]:
        panel.set_xlabel("learning rate")
    for panel in axes[:, 0]:
        panel.set_ylabel("instability score")
    figure.suptitle("Instability against learning rate, per clipping method (dashed: 0.3)")
    figure.tight_layout()
    return png(figure)


def png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
