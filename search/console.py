"""What the ``trimtab`` commands print, and where everything else goes.

The terminal shows our lines only: each phase of a study (:func:`phase`), our warnings and
errors, and the per-trial progress of :class:`ProgressPrinter`. Everything else — Ray's and
Tune's log lines, Tune's result boxes and TensorBoard hint, Optuna's experimental and
importance warnings — goes to a log file (a study's ``<storage>/<name>/study.log``), or
nowhere when there is none. ``trimtab -v`` shows all of it on the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

PHASE = "trimtab_phase"
OUR_PACKAGES = ("search", "train_loops", "serving", "policies")
_TERMINAL = "trimtab-terminal"
_FILE = "trimtab-file"


def phase(logger: logging.Logger, message: str, *args: Any) -> None:
    """Log one line the terminal shows as a study's progress (INFO, marked as a phase)."""
    logger.info(message, *args, extra={PHASE: True})


def describe_dataset(dataset: Any) -> str:
    """``1257/270/270 rows, 64 features, 10 classes`` for a prepared data set."""
    import pyarrow.parquet as pq

    rows = "/".join(
        str(pq.ParquetFile(dataset.split_path(split)).metadata.num_rows)
        for split in ("train", "validation", "test")
    )
    return (
        f"{rows} train/validation/test rows, {dataset.num_features} features, "
        f"{dataset.num_classes} classes"
    )


def describe_probe(probe: Any) -> str:
    """The clip ranges the gradient probe chose."""
    norm, value = probe.ranges()
    return (
        f"max_norm searched in [{norm.low:.3g}, {norm.high:.3g}], "
        f"clip_value in [{value.low:.3g}, {value.high:.3g}]"
    )


def describe_cluster() -> str:
    """What the connected Ray offers."""
    import ray

    resources = ray.cluster_resources()
    gpus = f", {resources['GPU']:g} GPUs" if resources.get("GPU") else ""
    return f"{resources.get('CPU', 0):g} CPUs{gpus} on {len(ray.nodes())} node(s)"


def describe_final_fit(metrics: dict[str, Any]) -> str:
    """The final fit's accuracy and stability, from its last report."""
    nan = float("nan")
    return (
        f"val_accuracy={metrics.get('val_accuracy', nan):.3f} "
        f"val_loss={metrics.get('val_loss', nan):.3f} "
        f"instability={metrics.get('instability_score', nan):.3f} "
        f"after {int(metrics.get('step', 0))} steps"
    )


class _OurLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, PHASE, False):
            return True
        ours = record.name.split(".", 1)[0] in OUR_PACKAGES
        return ours and record.levelno >= logging.WARNING


class _LazyFile(logging.FileHandler):
    """A file handler that creates its directory when the first record arrives."""

    def _open(self):  # type: ignore[override]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def quiet_console(verbose: bool = False) -> None:
    """Show our lines on stderr; hold everything else for :func:`log_to_file`."""
    # Tune's classic reporter honours RunConfig(verbose=0); its newer one prints result boxes
    # and a TensorBoard hint regardless.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.captureWarnings(True)  # Optuna's warnings become log records (py.warnings)
    import optuna

    optuna.logging.disable_default_handler()  # Optuna's INFO lines: to our handlers
    optuna.logging.enable_propagation()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):  # ours from an earlier call, or basicConfig's
        if handler.get_name() == _TERMINAL or type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.set_name(_TERMINAL)
    if verbose:
        terminal.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        terminal.setFormatter(logging.Formatter("%(message)s"))
        terminal.addFilter(_OurLines())
    root.addHandler(terminal)
    route_ray_logs()


def route_ray_logs() -> None:
    """Send the ``ray`` logger's records through ours (Ray prints them itself otherwise)."""
    import ray  # noqa: F401  (importing Ray installs its handler; replace it after)

    ray_logger = logging.getLogger("ray")
    ray_logger.handlers.clear()
    ray_logger.propagate = True


def log_to_file(path: Path) -> None:
    """Also write every record (ours, Ray's, warnings) to ``path``, created on first use."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _FILE]:
        root.removeHandler(handler)
        handler.close()
    handler = _LazyFile(path, delay=True, encoding="utf-8")
    handler.set_name(_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


class ProgressPrinter:
    """A Tune callback printing one line per started and finished trial."""

    def __new__(cls, total: int):  # built lazily so `trimtab --help` does not import Ray
        import ray.tune

        class _Printer(ray.tune.Callback):
            def __init__(self) -> None:
                self.started = time.monotonic()
                self.done = 0

            def on_trial_start(self, iteration, trials, trial, **info) -> None:
                click.echo(f"  trial {trial.trial_id} started: {_short(trial.config)}", err=True)

            def on_trial_complete(self, iteration, trials, trial, **info) -> None:
                self.done += 1
                result = trial.last_result or {}
                nan = float("nan")
                flag = " DIVERGED (stopped early)" if result.get("diverged") else ""
                click.echo(
                    f"[{self.done}/{total} {time.monotonic() - self.started:5.0f}s] trial "
                    f"{trial.trial_id}: instability={result.get('instability_score', nan):.3f} "
                    f"cost=${result.get('cost_dollars', nan):.6f} "
                    f"val_acc={result.get('val_accuracy', nan):.3f}{flag}",
                    err=True,
                )

            def on_trial_error(self, iteration, trials, trial, **info) -> None:
                self.done += 1
                click.echo(f"[{self.done}/{total}] trial {trial.trial_id} FAILED", err=True)

        return _Printer()


def _short(config: dict) -> str:
    from search.space import describe_params, search_params

    return describe_params(search_params(config))


def print_result(result: Any) -> None:
    """The study's outcome on stdout: the Pareto front, counts, the winner, where things are."""
    table = result.trials
    cost = result.spec.objectives.cost
    click.echo("\nPareto front (feasible, non-dominated):")
    columns = ["trial_id", "settings", "instability_score", cost, "val_accuracy"]
    if len(result.pareto_front):
        click.echo(result.pareto_front[columns].to_string(index=False))
    else:
        click.echo("  (empty: no feasible trial)")
    diverged = int(table["diverged"].sum()) if len(table) else 0
    click.echo(
        f"\n{len(table)} trials, {int(table['feasible'].sum()) if len(table) else 0} "
        f"feasible, {diverged} diverged"
    )
    if result.winner is not None:
        click.echo(
            f"winner: {result.winner['trial_id']} {result.winner['settings']} — "
            f"{result.winner_reason}"
        )
    if result.final_checkpoint:
        click.echo(f"final fit checkpoint: {result.final_checkpoint}")
    click.echo(f"report: {result.directory / 'report' / 'report.html'}")
