"""``trimtab export``: a training checkpoint → a gated, registered model version."""

from __future__ import annotations

from pathlib import Path

import click

CHECKPOINT_FILES = ("state.pt", "train_config.json")


@click.command("export")
@click.option(
    "--checkpoint",
    "checkpoint",
    metavar="DIR",
    help="Checkpoint directory from train_loops (holds state.pt and train_config.json).",
)
@click.option(
    "--study",
    "study",
    metavar="DIR",
    help="Study directory (<storage>/<name>): export its winner (final fit, else the trial).",
)
@click.option("--registry", "registry_root", metavar="DIR", help="Registry directory.")
@click.option(
    "--alias",
    default="candidate",
    show_default=True,
    help="Alias to move to the new version.",
)
@click.option(
    "--quantization",
    default="dynamic",
    show_default=True,
    metavar="static|dynamic",
    help="INT8 mode to try; the gate falls back to FP32 if INT8 is worse or slower.",
)
@click.option(
    "--model-name",
    default=None,
    help="Name clients use for the model (the v2 protocol's model name) "
    "[default: the study's name, else the data set's].",
)
def export(
    checkpoint: str | None,
    study: str | None,
    registry_root: str | None,
    alias: str,
    quantization: str,
    model_name: str | None,
) -> None:
    """Export a checkpoint (or a study's winner) to ONNX, quantize it, gate it and register it
    as a new version."""
    from serving.gate import GateError
    from serving.registry import ALIAS_PATTERN, Registry, RegistryError
    from serving.ship import QUANTIZATION_MODES, ship

    lineage_extra: dict[str, str] = {}
    if (checkpoint is None) == (study is None):
        raise click.UsageError("give exactly one of --checkpoint DIR and --study DIR")
    if study is not None:
        checkpoint, lineage_extra = winner_checkpoint(Path(study))
    if registry_root is None:
        raise click.UsageError("--registry DIR is required")
    checkpoint_dir = Path(checkpoint)
    if not checkpoint_dir.is_dir():
        raise click.UsageError(f"checkpoint directory {checkpoint_dir} does not exist")
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint_dir / name).is_file()]
    if missing:
        raise click.UsageError(f"{checkpoint_dir} is not a checkpoint: {missing[0]} is missing")
    if Path(registry_root).exists() and not Path(registry_root).is_dir():
        raise click.UsageError(f"registry {registry_root} exists and is not a directory")
    if quantization not in QUANTIZATION_MODES:
        raise click.UsageError(
            f"--quantization must be one of {', '.join(QUANTIZATION_MODES)}, got {quantization!r}"
        )
    if not ALIAS_PATTERN.fullmatch(alias):
        raise click.UsageError(f"--alias must match [a-z][a-z0-9_-]*, got {alias!r}")

    from train_loops.checkpoint import load_model_for_export

    model, prepared, training_config, lineage = load_model_for_export(checkpoint_dir)
    if not lineage_extra:
        lineage_extra = study_lineage(checkpoint_dir)
    if model_name is None:
        model_name = lineage_extra.get("study") or dataset_name(prepared.root)
    try:
        version = ship(
            model,
            prepared,
            Registry(registry_root),
            model_name=model_name,
            lineage={"checkpoint": str(checkpoint_dir), **lineage, **lineage_extra},
            training_config=training_config,
            quantization=quantization,
            alias=alias,
        )
    except (GateError, RegistryError) as error:
        raise click.UsageError(str(error)) from error
    manifest = version.manifest
    click.echo(
        f"registered {manifest.model_name} version {version.version} "
        f"(quantization {manifest.quantization}) at {version.directory}; alias {alias} -> "
        f"{version.version}"
    )
    click.echo(manifest.gate["reason"])


def winner_checkpoint(study_dir: Path) -> tuple[str, dict[str, str]]:
    """The checkpoint a study hands over: its final fit, else the winning trial's own."""
    import json

    summary_path = study_dir / "report" / "summary.json"
    if not summary_path.is_file():
        raise click.UsageError(f"{study_dir} is not a finished study (no report/summary.json)")
    summary = json.loads(summary_path.read_text())
    if summary.get("winner") is None:
        raise click.UsageError(f"study {study_dir} has no winner (no feasible trial)")
    lineage = {"study": summary["name"], "trial": summary["winner"]}
    if summary.get("final_checkpoint"):
        return summary["final_checkpoint"], lineage
    import pandas as pd

    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    row = trials[trials["trial_id"] == summary["winner"]].iloc[0]
    if not row.get("checkpoint"):
        raise click.UsageError(f"the winning trial {summary['winner']} left no checkpoint")
    return str(row["checkpoint"]), lineage


def study_lineage(checkpoint_dir: Path) -> dict[str, str]:
    """The study a checkpoint came from, when it lies inside one (``<storage>/<name>/...``,
    the directory that holds ``optuna.journal``), and its trial when Tune ran it."""
    path = checkpoint_dir.resolve()
    for parent in path.parents:
        if (parent / "optuna.journal").is_file():
            lineage = {"study": parent.name}
            trial = next((p.name for p in path.parents if p.name.startswith("trial_")), None)
            if trial is not None:
                lineage["trial"] = trial.removeprefix("trial_")
            return lineage
    return {}


def dataset_name(dataset_dir: Path) -> str:
    """A model name from the prepared data's source: ``digits``, or the source file's stem."""
    import json

    source = json.loads((dataset_dir / "dataset.json").read_text()).get("source", "model")
    name = Path(str(source).removeprefix("sklearn ")).stem
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "model"
