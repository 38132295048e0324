"""Checks a study makes before it starts Ray: the model its spec names can be built; and
nothing left behind by a study refused before it started.

A misspelt model name or option must cost the user one line and exit status 2, not a
traceback from inside the probe or a trial, so the model is built once here, on the prepared
data's shape, before anything else runs.

Example::

    check_model("mlpp", {}, num_features=64, num_classes=10)
    # ModelError: model 'mlpp' is unknown: use one of mlp, cnn, transformer, rnn or
    # 'package.module:factory'
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from train_loops.models import _BUILDERS, BUILTIN_MODELS, ModelSpec, build_model

RESERVED = ("num_features", "num_classes")
"""Arguments every model builder takes from the data, never from ``model.options``."""


class ModelError(ValueError):
    """The spec's model cannot be built; the message names the name or option and what the
    builder accepts."""


def check_model(name: str, options: dict[str, Any], num_features: int, num_classes: int) -> None:
    """Build the model once; raise :class:`ModelError` with a one-line reason if it fails."""
    builder = _builder(name)
    accepted = _accepted_options(builder)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ModelError(
                f"model {name!r} has no option {unknown[0]!r}; it accepts "
                f"{', '.join(accepted) or 'no options'}"
            )
    try:
        build_model(ModelSpec(name, options), num_features, num_classes)
    except Exception as error:  # a user's builder may raise anything: report it in one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"model {name!r} {options}: cannot be built: {reason}") from error


def _builder(name: str) -> Callable[..., Any]:
    if name in _BUILDERS:
        return _BUILDERS[name]
    if ":" not in name:
        raise ModelError(
            f"model {name!r} is unknown: use one of {', '.join(BUILTIN_MODELS)} or "
            f"'package.module:factory'"
        )
    module_name, _, attribute = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"model {name!r}: cannot import the factory: {error}") from None


def _accepted_options(builder: Callable[..., Any]) -> list[str] | None:
    """The keyword options ``builder`` takes (``None``: it takes any, ``**options``)."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in RESERVED
        and p.name != "self"
    ]


@contextlib.contextmanager
def nothing_left_if_refused(
    directory: Path, refusals: tuple[type[Exception], ...]
) -> Iterator[None]:
    """Remove what the block created of ``directory`` (and its missing parents) when it
    raises one of ``refusals``: a study refused before it started leaves nothing behind."""
    created = None  # the outermost directory the block may create
    if not directory.exists():
        created = directory
        while not created.parent.exists():
            created = created.parent
    try:
        yield
    except refusals:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def refusals() -> tuple[type[Exception], ...]:
    """What a study raises when it refuses to start: bad data, a model that cannot be built,
    or another driver running it. The CLI turns each into one line and exit status 2."""
    from search.resume import StudyBusyError
    from train_loops.data import DataValidationError

    return (DataValidationError, ModelError, StudyBusyError)
