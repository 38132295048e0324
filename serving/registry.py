"""The model registry: a folder of immutable, hash-checked versions and movable aliases.

Layout::

    root/
      versions/v0001/model.onnx            the servable file
      versions/v0001/manifest.json         :class:`Manifest` (sha256 of model.onnx, lineage, ...)
      versions/v0001/reference_profile.json  inputs and predictions on held-out data (drift)
      versions/v0001/MODEL_CARD.md         generated from the manifest
      aliases/champion.json                {"version": 1}
      aliases/candidate.json               {"version": 2}

A version is assembled in ``root/.staging/`` and published by renaming its directory into
``versions/``, so a reader either sees a complete version or none. Versions are never changed
or deleted, which is what makes rollback a matter of moving an alias. Alias files are
replaced with ``os.replace``: a reader sees the old or the new target, never a torn file.

Loading (:meth:`ModelVersion.load_session`) hashes the bytes it hands to onnxruntime and
refuses them if they disagree with the manifest.

Example::

    registry = Registry(".trimtab/registry")
    version = registry.register(Path("model.onnx"), model_name="digits", ...)
    registry.set_alias("candidate", version.version)
    session = registry.get("champion").load_session()
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
import pydantic

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
PROFILE_FILE = "reference_profile.json"
MODEL_CARD_FILE = "MODEL_CARD.md"

ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]*")
_VERSION_DIRECTORY = re.compile(r"v(\d+)")


class RegistryError(Exception):
    """An unknown version or alias, a bad alias name, or an unreadable registry entry."""


class RegistryIntegrityError(RegistryError):
    """The sha256 of a version's model file disagrees with its manifest."""


class InputSchema(pydantic.BaseModel, extra="forbid", frozen=True):
    """The model's single input: rows of raw float32 features, in ``feature_names`` order."""

    name: str = "input"
    datatype: Literal["FP32"] = "FP32"
    feature_names: list[str]
    shape: list[int]

    @pydantic.model_validator(mode="after")
    def _shape_matches_features(self) -> InputSchema:
        if self.shape != [-1, len(self.feature_names)]:
            raise ValueError(
                f"input shape must be [-1, {len(self.feature_names)}], got {self.shape}"
            )
        return self


class OutputSchema(pydantic.BaseModel, extra="forbid", frozen=True):
    """The model's single output: one logit per class, in ``class_names`` order."""

    name: str = "logits"
    datatype: Literal["FP32"] = "FP32"
    class_names: list[str]
    shape: list[int]

    @pydantic.model_validator(mode="after")
    def _shape_matches_classes(self) -> OutputSchema:
        if self.shape != [-1, len(self.class_names)]:
            raise ValueError(
                f"output shape must be [-1, {len(self.class_names)}], got {self.shape}"
            )
        return self


class Manifest(pydantic.BaseModel, extra="forbid", frozen=True):
    """Everything known about one registered version; ``manifest.json`` on disk."""

    version: int
    sha256: str
    created_at: str
    """ISO 8601, UTC."""
    model_name: str
    """The name clients use (the v2 protocol's model name), e.g. ``"digits"``."""
    lineage: dict[str, Any]
    """Where the model came from: ``{"study": ..., "trial": ..., "checkpoint": ..., ...}``."""
    training_config: dict[str, Any]
    offline_metrics: dict[str, Any]
    """``{"accuracy": ..., "per_class": {...}, ...}`` on the held-out test split."""
    quantization: Literal["none", "dynamic", "static"]
    gate: dict[str, Any]
    input_schema: InputSchema
    output_schema: OutputSchema


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its directory and its parsed manifest."""

    version: int
    directory: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.directory / MODEL_FILE

    def verify(self) -> None:
        """Hash ``model.onnx``; raise :class:`RegistryIntegrityError` if it disagrees."""
        self._read_verified()

    def reference_profile(self) -> dict[str, Any]:
        """The parsed ``reference_profile.json`` (format: :func:`build_reference_profile`)."""
        return json.loads((self.directory / PROFILE_FILE).read_text())

    def load_session(self, **session_options: Any) -> onnxruntime.InferenceSession:
        """An ``onnxruntime.InferenceSession`` over exactly the bytes that were hashed.

        ``session_options`` go to ``InferenceSession`` (``sess_options``, ``providers``, ...);
        ``providers`` defaults to ``["CPUExecutionProvider"]``.
        """
        import onnxruntime

        model_bytes = self._read_verified()
        session_options.setdefault("providers", ["CPUExecutionProvider"])
        return onnxruntime.InferenceSession(model_bytes, **session_options)

    def _read_verified(self) -> bytes:
        model_bytes = self.onnx_path.read_bytes()
        actual = hashlib.sha256(model_bytes).hexdigest()
        if actual != self.manifest.sha256:
            raise RegistryIntegrityError(
                f"{self.onnx_path}: sha256 {actual} does not match the manifest's "
                f"{self.manifest.sha256}; refusing to load version {self.version}"
            )
        return model_bytes


class Registry:
    """A registry rooted at a directory (created if missing). Safe for concurrent use by
    several processes: versions are published by directory rename, aliases by file replace."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._versions = self.root / "versions"
        self._aliases = self.root / "aliases"
        self._staging = self.root / ".staging"
        for directory in (self._versions, self._aliases, self._staging):
            directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    def register(
        self,
        onnx_path: Path | str,
        *,
        model_name: str,
        lineage: dict[str, Any],
        training_config: dict[str, Any],
        offline_metrics: dict[str, Any],
        quantization: str,
        gate: dict[str, Any],
        feature_names: list[str],
        class_names: list[str],
        reference_profile: dict[str, Any],
    ) -> ModelVersion:
        """Copy ``onnx_path`` into the next free version and write its manifest, reference
        profile and model card. The input/output names and sizes are read from the file and
        must agree with ``feature_names`` and ``class_names``."""
        model_bytes = Path(onnx_path).read_bytes()
        input_schema, output_schema = _schemas_from_onnx(
            model_bytes, onnx_path, list(feature_names), list(class_names)
        )
        sha256 = hashlib.sha256(model_bytes).hexdigest()
        created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        staging = Path(tempfile.mkdtemp(prefix="version-", dir=self._staging))
        try:
            return self._publish(
                staging,
                model_bytes,
                reference_profile,
                dict(
                    sha256=sha256,
                    created_at=created_at,
                    model_name=model_name,
                    lineage=lineage,
                    training_config=training_config,
                    offline_metrics=offline_metrics,
                    quantization=quantization,
                    gate=gate,
                    input_schema=input_schema,
                    output_schema=output_schema,
                ),
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _publish(
        self,
        staging: Path,
        model_bytes: bytes,
        reference_profile: dict[str, Any],
        manifest_fields: dict[str, Any],
    ) -> ModelVersion:
        from serving.model_card import render_model_card

        os.chmod(staging, 0o755)
        _write_atomic(staging / MODEL_FILE, model_bytes)
        _write_atomic(staging / PROFILE_FILE, _to_json(reference_profile))
        # The version number is only known for sure once the rename succeeds: another process
        # may publish the same number first, in which case the manifest is rewritten and retried.
        while True:
            version = max(self.versions(), default=0) + 1
            try:
                manifest = Manifest(version=version, **manifest_fields)
            except pydantic.ValidationError as error:
                raise RegistryError(f"cannot register a version: {error}") from error
            _write_atomic(staging / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
            _write_atomic(staging / MODEL_CARD_FILE, render_model_card(manifest).encode())
            target = self._version_directory(version)
            try:
                os.rename(staging, target)
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            _fsync_directory(self._versions)
            logger.info("registered version %d (%s)", version, manifest.sha256[:12])
            return ModelVersion(version, target, manifest)

    def versions(self) -> list[int]:
        """Every published version number, ascending."""
        numbers = []
        for entry in self._versions.iterdir():
            match = _VERSION_DIRECTORY.fullmatch(entry.name)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def get(self, version_or_alias: int | str) -> ModelVersion:
        """The version with this number, or the one an alias points to. Reads the manifest;
        does not hash the model (:meth:`ModelVersion.load_session` does)."""
        if isinstance(version_or_alias, str):
            version = self.resolve(version_or_alias)
        elif isinstance(version_or_alias, int) and not isinstance(version_or_alias, bool):
            version = version_or_alias
        else:
            raise RegistryError(
                f"expected a version number or an alias name, got {version_or_alias!r}"
            )
        directory = self._version_directory(version)
        manifest_path = directory / MANIFEST_FILE
        try:
            text = manifest_path.read_text()
        except FileNotFoundError:
            raise RegistryError(
                f"no version {version} in {self.root} (versions: {self._describe_versions()})"
            ) from None
        try:
            manifest = Manifest.model_validate_json(text)
        except pydantic.ValidationError as error:
            raise RegistryError(f"{manifest_path}: not a valid manifest: {error}") from error
        if manifest.version != version:
            raise RegistryError(
                f"{manifest_path}: says version {manifest.version} but lives in {directory.name}"
            )
        return ModelVersion(version, directory, manifest)

    def resolve(self, alias: str) -> int:
        """The version number ``alias`` points to."""
        path = self._alias_path(alias)
        try:
            text = path.read_text()
        except FileNotFoundError:
            known = ", ".join(sorted(self.aliases())) or "none"
            raise RegistryError(f"no alias {alias!r} in {self.root} (aliases: {known})") from None
        try:
            version = json.loads(text)["version"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise RegistryError(f"{path}: not a valid alias file: {error}") from error
        if not isinstance(version, int) or isinstance(version, bool):
            raise RegistryError(f"{path}: version must be an integer, got {version!r}")
        return version

    def set_alias(self, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (which must exist), atomically."""
        path = self._alias_path(alias)
        if not (self._version_directory(version) / MANIFEST_FILE).is_file():
            raise RegistryError(
                f"cannot point alias {alias!r} at version {version}: no such version in "
                f"{self.root} (versions: {self._describe_versions()})"
            )
        _write_atomic(path, json.dumps({"version": version}).encode())
        logger.info("alias %s -> version %d", alias, version)

    def aliases(self) -> dict[str, int]:
        """Every alias and the version it points to."""
        names = sorted(
            entry.stem
            for entry in self._aliases.glob("*.json")
            if ALIAS_PATTERN.fullmatch(entry.stem)
        )
        return {name: self.resolve(name) for name in names}

    def _version_directory(self, version: int) -> Path:
        return self._versions / f"v{version:04d}"

    def _alias_path(self, alias: str) -> Path:
        if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
            raise RegistryError(f"alias names must match [a-z][a-z0-9_-]*, got {alias!r}")
        return self._aliases / f"{alias}.json"

    def _describe_versions(self) -> str:
        return ", ".join(map(str, self.versions())) or "none"


def build_reference_profile(
    features: np.ndarray,
    predicted_classes: np.ndarray,
    feature_names: list[str],
    class_names: list[str],
    *,
    labels: np.ndarray | None = None,
    bins: int = 10,
    sample_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """What drift monitoring compares live traffic against, as plain JSON.

    Per feature:

    - ``cut_points``: the interior edges of ``bins`` quantile bins of the reference values,
      deduplicated (a constant feature has one). The outer bins are open, so the edges are
      ``[-inf, *cut_points, +inf]`` and bins are right-closed: a value ``x`` falls in bin
      ``numpy.searchsorted(cut_points, x, side="left")``. (Infinities are not valid JSON, so
      only the finite cut points are stored.) ``counts``/``proportions`` hold the reference
      rows per bin (``len(cut_points) + 1`` entries): the expected side of a PSI.
    - ``quantiles``: values at the top-level ``quantile_levels``; ``mean``, ``std``, ``min``,
      ``max``.
    - ``sample``: up to ``sample_size`` reference values (the same randomly chosen rows for
      every feature) for a two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``).

    ``predictions`` (and ``labels`` when given) hold per-class counts and proportions, in
    ``class_names`` order.
    """
    if features.ndim != 2 or features.shape[1] != len(feature_names):
        raise ValueError(
            f"features must have shape (rows, {len(feature_names)}), got {features.shape}"
        )
    if len(predicted_classes) != len(features):
        raise ValueError(f"{len(predicted_classes)} predictions for {len(features)} feature rows")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    rows = len(features)
    if rows == 0:
        raise ValueError("a reference profile needs at least one row")
    quantile_levels = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
    sample_rows = np.random.default_rng(seed).permutation(rows)[:sample_size]
    sample_rows.sort()
    profile_features = {}
    for column, name in enumerate(feature_names):
        values = features[:, column].astype(np.float64)
        cut_points = np.unique(np.quantile(values, np.arange(1, bins) / bins))
        counts = np.bincount(
            np.searchsorted(cut_points, values, side="left"), minlength=len(cut_points) + 1
        )
        profile_features[name] = {
            "cut_points": cut_points.tolist(),
            "counts": counts.tolist(),
            "proportions": (counts / rows).tolist(),
            "quantiles": np.quantile(values, quantile_levels).tolist(),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "sample": values[sample_rows].tolist(),
        }
    profile: dict[str, Any] = {
        "format_version": 1,
        "rows": rows,
        "binning": (
            f"{bins} quantile bins of the reference rows, deduplicated cut points, open outer "
            "bins (-inf/+inf ends), right-closed: bin = searchsorted(cut_points, x, 'left')"
        ),
        "quantile_levels": quantile_levels,
        "features": profile_features,
        "class_names": list(class_names),
        "predictions": _class_distribution(predicted_classes, len(class_names)),
    }
    if labels is not None:
        profile["labels"] = _class_distribution(labels, len(class_names))
    return profile


def _class_distribution(classes: np.ndarray, num_classes: int) -> dict[str, list]:
    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=num_classes)
    return {"counts": counts.tolist(), "proportions": (counts / counts.sum()).tolist()}


def _schemas_from_onnx(
    model_bytes: bytes, path: Path, feature_names: list[str], class_names: list[str]
) -> tuple[InputSchema, OutputSchema]:
    try:
        graph = onnx.load_from_string(model_bytes).graph
    except Exception as error:  # onnx raises protobuf's DecodeError and others
        raise RegistryError(f"{path}: not an ONNX model: {error}") from error
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise RegistryError(
            f"{path}: expected one input and one output, got {len(graph.input)} and "
            f"{len(graph.output)}"
        )
    schemas = []
    for value, names, what in (
        (graph.input[0], feature_names, "features"),
        (graph.output[0], class_names, "classes"),
    ):
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise RegistryError(f"{path}: {value.name!r} is not float32")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if len(dims) != 2 or dims[0] != -1 or dims[1] != len(names):
            raise RegistryError(
                f"{path}: {value.name!r} has shape {dims}; expected a dynamic batch axis and "
                f"{len(names)} {what}"
            )
        schemas.append((value.name, [-1, len(names)]))
    (input_name, input_shape), (output_name, output_shape) = schemas
    return (
        InputSchema(name=input_name, feature_names=feature_names, shape=input_shape),
        OutputSchema(name=output_name, class_names=class_names, shape=output_shape),
    )


def _to_json(value: Any) -> bytes:
    # allow_nan=False: a NaN or infinity would make the file unreadable to strict JSON parsers.
    return json.dumps(value, indent=2, allow_nan=False).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a unique temporary file beside ``path``, fsync it, then ``os.replace``."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
