"""A Markdown model card per registry version, generated from its manifest alone.

The card says what the model is for, what it was trained and tested on, how it was configured,
how well it did overall and per class, how it was quantized and gated, and where it is known
to fall short. Everything in it is read from :class:`serving.manifest.Manifest`, so the card
can always be regenerated and never disagrees with the manifest.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.manifest import Manifest


def render_model_card(manifest: Manifest) -> str:
    """The model card for ``manifest`` as Markdown."""
    sections = [
        f"# Model card: {manifest.model_name}, version {manifest.version}",
        _summary(manifest),
        _intended_use(manifest),
        _data(manifest),
        _training_configuration(manifest),
        _offline_metrics(manifest),
        _quantization_and_gate(manifest),
        _limitations(manifest),
    ]
    return "\n\n".join(section.rstrip() for section in sections) + "\n"


def _summary(manifest: Manifest) -> str:
    lineage = manifest.lineage
    rows = [
        ("version", manifest.version),
        ("created (UTC)", manifest.created_at),
        ("sha256 of model.onnx", f"`{manifest.sha256}`"),
        ("study", lineage.get("study", "not recorded")),
        ("trial", lineage.get("trial", "not recorded")),
        ("checkpoint", lineage.get("checkpoint", "not recorded")),
        ("quantization", manifest.quantization),
    ]
    return _table(("field", "value"), rows)


def _intended_use(manifest: Manifest) -> str:
    inputs, outputs = manifest.input_schema, manifest.output_schema
    features = inputs.feature_names
    shown = ", ".join(f"`{name}`" for name in features[:8])
    if len(features) > 8:
        shown += f", … ({len(features)} in all, listed in `manifest.json`)"
    return (
        "## Intended use\n\n"
        f"Classifies rows of {len(features)} numeric features into one of "
        f"{len(outputs.class_names)} classes ({', '.join(outputs.class_names)}), for data drawn "
        "from the same distribution as the training data below.\n\n"
        f"- Input `{inputs.name}`: {inputs.datatype}, shape `{inputs.shape}` (any batch size), "
        f"raw (unstandardised) feature values in this order: {shown}. Standardisation is part "
        "of the model.\n"
        f"- Output `{outputs.name}`: {outputs.datatype}, shape `{outputs.shape}`, unnormalised "
        "logits; the predicted class is the arg-max, softmax gives probabilities.\n"
        "- Not intended for inputs with missing values, other feature orders or units, or "
        "classes not listed above."
    )


def _data(manifest: Manifest) -> str:
    data = manifest.lineage.get("data")
    metrics = manifest.offline_metrics
    lines = ["## Data and split", ""]
    if isinstance(data, dict):
        if "source" in data:
            lines.append(f"- Source: {data['source']}")
        split_rows = data.get("split_rows")
        if isinstance(split_rows, dict):
            described = ", ".join(f"{split} {rows}" for split, rows in split_rows.items())
            lines.append(f"- Rows per split: {described}")
        if "split" in data:
            lines.append(f"- Split: {data['split']}")
    else:
        lines.append("- Data source and split: not recorded in the lineage.")
    if "split" in metrics:
        lines.append(
            f"- Offline metrics below are on the `{metrics['split']}` split "
            f"({metrics.get('rows', '?')} rows), which training and model selection never saw."
        )
    return "\n".join(lines)


def _training_configuration(manifest: Manifest) -> str:
    config = manifest.training_config
    if not config:
        return "## Training configuration\n\nNot recorded."
    rows = [(f"`{key}`", _format_value(value)) for key, value in _flatten(config)]
    return "## Training configuration\n\n" + _table(("setting", "value"), rows)


def _offline_metrics(manifest: Manifest) -> str:
    metrics = manifest.offline_metrics
    overall = [
        (name, _format_value(value))
        for name, value in metrics.items()
        if name not in ("per_class", "split", "rows", "confusion_matrix")
        and not isinstance(value, dict | list)
    ]
    parts = ["## Offline metrics", ""]
    parts.append(_table(("metric", "value"), overall) if overall else "Not recorded.")
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        columns = sorted({key for values in per_class.values() for key in values})
        rows = [
            (name, *(_format_value(values.get(column, "")) for column in columns))
            for name, values in per_class.items()
        ]
        parts += ["", "Per class:", "", _table(("class", *columns), rows)]
    return "\n".join(parts)


def _quantization_and_gate(manifest: Manifest) -> str:
    gate = manifest.gate
    lines = ["## Quantization and gate", ""]
    lines.append(f"- Registered artifact: quantization `{manifest.quantization}`.")
    if manifest.gate_overridden:
        lines.append(
            f"- **Registered without the gate** (explicit override): {gate['override']}. "
            "Parity, INT8 accuracy and latency were not checked."
        )
        return "\n".join(lines)
    if "reason" in gate:
        lines.append(f"- Gate decision: {gate['reason']}")
    if "split" in gate:
        lines.append(
            f"- The gate decided on the `{gate['split']}` split ({gate.get('rows', '?')} rows); "
            "the offline metrics use rows it never saw."
        )
    parity = gate.get("parity")
    if isinstance(parity, list | tuple):
        for check in parity:
            difference = _format_value(check.get("max_abs_diff"))
            lines.append(
                f"- FP32 ONNX vs PyTorch, {check.get('inputs')} inputs at batch "
                f"{check.get('batch_size')}: max |Δlogit| {difference}"
            )
    for key in ("fp32_accuracy", "int8_accuracy", "accuracy_drop", "max_accuracy_drop"):
        if key in gate:
            lines.append(f"- {key.replace('_', ' ')}: {_format_value(gate[key])}")
    latency = gate.get("latency")
    if isinstance(latency, list | tuple) and latency:
        lines += [
            "",
            _table(
                ("batch", "FP32 p50 ms", "INT8 p50 ms", "speed-up"),
                [
                    (
                        entry.get("batch_size"),
                        _format_value(entry.get("fp32_p50_ms")),
                        _format_value(entry.get("int8_p50_ms")),
                        _format_value(entry.get("speedup")),
                    )
                    for entry in latency
                ],
            ),
        ]
    details = {k: v for k, v in gate.items() if k not in ("parity", "latency", "reason")}
    if details:
        lines += ["", "<details><summary>All gate fields</summary>", "", "```json"]
        lines += [json.dumps(details, indent=2, sort_keys=True), "```", "", "</details>"]
    return "\n".join(lines)


def _limitations(manifest: Manifest) -> str:
    metrics = manifest.offline_metrics
    lines = ["## Known limitations", ""]
    accuracy, rows = metrics.get("accuracy"), metrics.get("rows")
    if isinstance(accuracy, float) and isinstance(rows, int) and rows > 0:
        half_width = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / rows)
        lines.append(
            f"- Accuracy was measured on {rows} rows: about ±{half_width:.1%} at 95% confidence."
        )
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        scored = [(values.get("f1"), name) for name, values in per_class.items()]
        scored = [(f1, name) for f1, name in scored if isinstance(f1, float)]
        if scored:
            f1, name = min(scored)
            lines.append(f"- Weakest class: `{name}` (F1 {f1:.3f}).")
    if manifest.quantization != "none":
        lines.append(
            "- INT8 weights and activations change outputs slightly; individual predictions "
            "near a decision boundary can differ from the FP32 model."
        )
    lines += [
        "- Offline metrics come from a held-out split of the training data's distribution; "
        "production traffic that drifts from the reference profile "
        "(`reference_profile.json`) is outside what was measured.",
        "- Logits are not calibrated probabilities unless calibration is monitored separately.",
    ]
    return "\n".join(lines)


def _flatten(config: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(value, f"{name}.")
        else:
            items.append((name, value))
    return items


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
        # Keep 1.0 reading as a float (a clipping threshold of 1.0, not a count of 1).
        return text if any(c in text for c in ".ein") else f"{text}.0"
    if isinstance(value, list | tuple | dict):
        return f"`{json.dumps(value)}`"
    return str(value).replace("|", "\\|")


def _table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
