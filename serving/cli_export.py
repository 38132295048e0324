"""``trimtab export``: a training checkpoint → a gated, registered model version."""

from __future__ import annotations

from pathlib import Path

import click

from search.cli import UserError

CHECKPOINT_FILES = ("state.pt", "train_config.json")


@click.command("export")
@click.option(
    "--checkpoint",
    "checkpoint",
    metavar="DIR",
    help="Checkpoint directory from train_loops (holds state.pt and train_config.json).",
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
    default="digits",
    show_default=True,
    help="Name clients use for the model (the v2 protocol's model name).",
)
def export(
    checkpoint: str | None,
    registry_root: str | None,
    alias: str,
    quantization: str,
    model_name: str,
) -> None:
    """Export a checkpoint to ONNX, quantize it, gate it and register it as a new version."""
    from serving.gate import GateError
    from serving.registry import ALIAS_PATTERN, Registry, RegistryError
    from serving.ship import QUANTIZATION_MODES, ship

    if checkpoint is None:
        raise UserError("--checkpoint DIR is required")
    if registry_root is None:
        raise UserError("--registry DIR is required")
    checkpoint_dir = Path(checkpoint)
    if not checkpoint_dir.is_dir():
        raise UserError(f"checkpoint directory {checkpoint_dir} does not exist")
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint_dir / name).is_file()]
    if missing:
        raise UserError(f"{checkpoint_dir} is not a checkpoint: {missing[0]} is missing")
    if Path(registry_root).exists() and not Path(registry_root).is_dir():
        raise UserError(f"registry {registry_root} exists and is not a directory")
    if quantization not in QUANTIZATION_MODES:
        raise UserError(
            f"--quantization must be one of {', '.join(QUANTIZATION_MODES)}, got {quantization!r}"
        )
    if not ALIAS_PATTERN.fullmatch(alias):
        raise UserError(f"--alias must match [a-z][a-z0-9_-]*, got {alias!r}")

    from train_loops.checkpoint import load_model_for_export

    model, prepared, training_config, lineage = load_model_for_export(checkpoint_dir)
    try:
        version = ship(
            model,
            prepared,
            Registry(registry_root),
            model_name=model_name,
            lineage={"checkpoint": str(checkpoint_dir), **lineage},
            training_config=training_config,
            quantization=quantization,
            alias=alias,
        )
    except (GateError, RegistryError) as error:
        raise UserError(str(error)) from error
    manifest = version.manifest
    click.echo(
        f"registered {manifest.model_name} version {version.version} "
        f"(quantization {manifest.quantization}) at {version.directory}; alias {alias} -> "
        f"{version.version}"
    )
    click.echo(manifest.gate["reason"])
