"""``trimtab study run|report``, ``trimtab train`` and ``trimtab demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from search.cli import fail, main
from search.spec import SpecError, StudySpec
from train_loops.data import DataValidationError


def load_spec(path: str, overrides: dict[str, Any] | None = None) -> StudySpec:
    try:
        spec = StudySpec.from_yaml(path)
        if overrides:
            values = spec.model_dump()
            for dotted, value in overrides.items():
                section, key = dotted.split(".")
                values[section][key] = value
            spec = StudySpec.from_dict(values, origin=path)
    except SpecError as error:
        fail(str(error))
    return spec


class ProgressPrinter:
    """A Tune callback printing one line per finished trial (live progress on the terminal)."""

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
                click.echo(f"  trial {trial.trial_id} FAILED", err=True)

        return _Printer()


def _short(config: dict) -> str:
    from search.space import describe_params, search_params

    return describe_params(search_params(config))


def run_study(spec: StudySpec):
    """The code path `trimtab study run`, `ray submit` and Ray Jobs share."""
    from search.study import Study

    click.echo(
        f"study {spec.name}: {spec.search.num_trials} trials → "
        f"{Path(spec.storage).resolve() / spec.name}",
        err=True,
    )
    try:
        result = Study(spec, callbacks=[ProgressPrinter(spec.search.num_trials)]).run()
    except DataValidationError as error:
        fail(str(error))
    print_result(result)
    return result


def print_result(result) -> None:
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


@main.group()
def study() -> None:
    """Run a tuning study and regenerate its report."""


@study.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--trials", type=int, default=None, help="Override search.num_trials.")
@click.option("--storage", default=None, help="Override the storage directory.")
def study_run(config: str, trials: int | None, storage: str | None) -> None:
    """Run (or continue) the study described by CONFIG (a YAML file)."""
    overrides: dict[str, Any] = {}
    if trials is not None:
        overrides["search.num_trials"] = trials
    spec = load_spec(config, overrides)
    if storage is not None:
        spec = spec.model_copy(update={"storage": storage})
    run_study(spec)


@study.command("report")
@click.argument("directory", type=click.Path(file_okay=False))
def study_report(directory: str) -> None:
    """Regenerate the report of the study stored in DIRECTORY (``<storage>/<name>``)."""
    from search.report import regenerate_report

    path = Path(directory)
    if not (path / "tune").is_dir():
        fail(f"{directory}: not a study directory (no tune/ inside)")
    click.echo(regenerate_report(path))


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, default=None, help="Override training.num_workers.")
@click.option(
    "--name", default="train", show_default=True, help="Run name; the same name resumes the run."
)
def train(config: str, workers: int | None, name: str) -> None:
    """One training run of CONFIG's data, model and training settings with Ray Train."""
    from search.ray_runtime import ensure_ray
    from train_loops.data import prepare_dataset
    from train_loops.trainer import build_trainer

    spec = load_spec(config, {"training.num_workers": workers} if workers else None)
    directory = Path(spec.storage).resolve() / spec.name
    try:
        dataset = prepare_dataset(spec.data.to_data_spec(), directory / "data")
        train_config = spec.train_config(dataset.root)
    except (DataValidationError, ValueError) as error:
        fail(str(error))
    ensure_ray()
    result = build_trainer(train_config, storage_path=directory, name=name).fit()
    metrics = result.metrics
    click.echo(
        f"val_accuracy={metrics['val_accuracy']:.4f} "
        f"instability={metrics['instability_score']:.3f} "
        f"diverged={int(metrics['diverged'])} steps={int(metrics['step'])}"
    )
    click.echo(f"checkpoint: {result.checkpoint.path}")


@main.command()
@click.option("--storage", default=".trimtab/demo", show_default=True)
@click.option("--exit-after-samples", is_flag=True, help="Stop after the sample requests.")
@click.option("--port", type=int, default=8000, show_default=True)
def demo(storage: str, exit_after_samples: bool, port: int) -> None:
    """The whole path on the embedded digits data: search → train → export → serve → predict."""
    from search.demo import run_demo

    run_demo(Path(storage), port=port, keep_serving=not exit_after_samples)
