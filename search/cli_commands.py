"""``trimtab study run|report``, ``trimtab train`` and ``trimtab demo``: the search part's
commands, collected in :data:`commands` for the ``trimtab`` group (:mod:`search.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from search.cli_errors import fail
from search.spec import SpecError, StudySpec


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


def run_study(spec: StudySpec):
    """The code path `trimtab study run`, `ray submit` and Ray Jobs share: our lines on the
    terminal, everything else in ``<storage>/<name>/study.log``; bad input exits 2."""
    from search.console import ProgressPrinter, log_to_file, print_result, quiet_console
    from search.preflight import refusals
    from search.study import Study

    directory = Path(spec.storage).resolve() / spec.name
    quiet_console(verbose=_verbose())
    log_to_file(directory / "study.log")
    click.echo(f"study {spec.name}: {spec.search.num_trials} trials → {directory}", err=True)
    try:
        result = Study(spec, callbacks=[ProgressPrinter(spec.search.num_trials)]).run()
    except refusals() as error:
        fail(str(error))
    print_result(result)
    return result


def _verbose() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and context.find_root().params.get("verbose"))


@click.group()
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
    if not (path / "report" / "trials.parquet").is_file():
        fail(f"{directory}: not a study directory (no report/trials.parquet inside)")
    click.echo(regenerate_report(path))


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, default=None, help="Override training.num_workers.")
@click.option(
    "--name", default="train", show_default=True, help="Run name; the same name resumes the run."
)
def train(config: str, workers: int | None, name: str) -> None:
    """One training run of CONFIG's data, model and training settings with Ray Train."""
    from search.preflight import check_model
    from train_loops.data import DataValidationError, prepare_dataset
    from train_loops.ray_runtime import ensure_ray
    from train_loops.trainer import build_trainer

    spec = load_spec(config, {"training.num_workers": workers} if workers else None)
    directory = Path(spec.storage).resolve() / spec.name
    try:
        dataset = prepare_dataset(spec.data.to_data_spec(), directory / "data")
        check_model(spec.model.name, spec.model.options, dataset.num_features, dataset.num_classes)
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


@click.command()
@click.option("--storage", default=".trimtab/demo", show_default=True)
@click.option("--exit-after-samples", is_flag=True, help="Stop after the sample requests.")
@click.option("--port", type=int, default=8000, show_default=True)
def demo(storage: str, exit_after_samples: bool, port: int) -> None:
    """The whole path on the embedded stress workload: search → train → export → serve → predict."""
    from search.console import log_to_file, quiet_console
    from search.demo import run_demo

    quiet_console(verbose=_verbose())
    log_to_file(Path(storage) / "demo.log")
    run_demo(Path(storage), port=port, keep_serving=not exit_after_samples)


commands: list[click.Command] = [study, train, demo]
