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
    version = registry.register(Path("model.onnx"), model_name="digits", gate=gate_result, ...)
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
from typing import TYPE_CHECKING, Any

import pydantic

from serving.atomic_files import fsync_directory, to_json, write_atomic
from serving.gate_result import GateResult, checked_gate_record
from serving.manifest import Manifest
from serving.model_card import render_model_card
from serving.model_schema import InputSchema, OutputSchema, schemas_from_onnx
from serving.reference_profile import build_reference_profile

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "ALIAS_PATTERN",
    "InputSchema",
    "Manifest",
    "ModelVersion",
    "OutputSchema",
    "Registry",
    "RegistryError",
    "RegistryIntegrityError",
    "build_reference_profile",
]

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
        feature_names: list[str],
        class_names: list[str],
        reference_profile: dict[str, Any],
        gate: GateResult | None = None,
        gate_override: str | None = None,
    ) -> ModelVersion:
        """Copy ``onnx_path`` into the next free version and write its manifest, reference
        profile and model card. The input/output names and sizes are read from the file and
        must agree with ``feature_names`` and ``class_names``.

        Registration needs the gate: ``gate`` must be a passed
        :class:`~serving.gate_result.GateResult` (what :func:`serving.gate.run_gate` returns),
        or, for experiments and benchmarks only, ``gate_override`` must give the reason the
        gate was skipped (logged as a warning, stored in the manifest and on the model card).
        Anything else raises :class:`RegistryError` before the disk is touched.
        """
        try:
            gate_record = checked_gate_record(gate, gate_override)
        except ValueError as error:
            raise RegistryError(str(error)) from None
        model_bytes = Path(onnx_path).read_bytes()
        try:
            input_schema, output_schema = schemas_from_onnx(
                model_bytes, onnx_path, list(feature_names), list(class_names)
            )
        except ValueError as error:
            raise RegistryError(str(error)) from error
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
                    gate=gate_record,
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
        os.chmod(staging, 0o755)
        write_atomic(staging / MODEL_FILE, model_bytes)
        write_atomic(staging / PROFILE_FILE, to_json(reference_profile))
        # The version number is only known for sure once the rename succeeds: another process
        # may publish the same number first, in which case the manifest is rewritten and retried.
        while True:
            version = max(self.versions(), default=0) + 1
            try:
                manifest = Manifest(version=version, **manifest_fields)
            except pydantic.ValidationError as error:
                raise RegistryError(f"cannot register a version: {error}") from error
            write_atomic(staging / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
            write_atomic(staging / MODEL_CARD_FILE, render_model_card(manifest).encode())
            target = self._version_directory(version)
            try:
                os.rename(staging, target)
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            fsync_directory(self._versions)
            logger.info("registered version %d (%s)", version, manifest.sha256[:12])
            if "override" in manifest.gate:
                logger.warning(
                    "version %d was registered WITHOUT the gate (override: %s)",
                    version,
                    manifest.gate["override"],
                )
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
        write_atomic(path, json.dumps({"version": version}).encode())
        logger.info("alias %s -> version %d", alias, version)

    def move_alias(self, alias: str, version: int, *, previous_alias: str) -> int | None:
        """Point ``alias`` at ``version`` after checking its file against the manifest hash,
        remembering the old target in ``previous_alias`` (what a rollback returns to).

        Returns the old target (``None`` if ``alias`` was unset). Moving an alias to where it
        already points changes nothing. Raises :class:`RegistryError` for an unknown version
        and :class:`RegistryIntegrityError` for a file that fails its hash (nothing moves).
        """
        self.get(version).verify()
        try:
            current = self.resolve(alias)
        except RegistryError:
            current = None
        if current == version:
            return current
        if current is not None:
            self.set_alias(previous_alias, current)
        self.set_alias(alias, version)
        return current

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
