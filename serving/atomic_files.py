"""Crash-safe writes for the registry: a file is replaced whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def to_json(value: Any) -> bytes:
    """Indented JSON bytes; refuses NaN and infinities."""
    # allow_nan=False: a NaN or infinity would make the file unreadable to strict JSON parsers.
    return json.dumps(value, indent=2, allow_nan=False).encode()


def write_atomic(path: Path, data: bytes) -> None:
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
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
