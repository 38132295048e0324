"""The served model inside one process: load a registry alias, run it, follow the alias.

:class:`ModelHolder` owns the current :class:`LoadedModel` (an onnxruntime session over
hash-checked bytes plus the manifest's schema). A request takes the current model once and
uses that object to the end, so a swap never changes the model under a request: requests in
flight finish on the old session, which is freed when the last of them lets go.

Swapping happens off the request path: :meth:`ModelHolder.watch_alias` re-reads the alias
file every ``poll_interval_s`` and, when it moved, verifies and loads the new version in a
worker thread before replacing the reference. Every replica runs its own watcher, so moving
the alias in the registry (the admin routes do it through :meth:`ModelHolder.promote` and
:meth:`ModelHolder.rollback`) reaches all of them within one poll interval. A version whose
file fails its hash is never served: the holder keeps the model it has.

Every prediction is reported to one :class:`PredictionObserver` (a no-op by default), the
hook monitoring plugs into.

Example::

    holder = ModelHolder(Registry(".trimtab/registry"), alias="champion")
    model = holder.load()
    logits = model.run(np.zeros((1, model.num_features), np.float32))
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serving.registry import ModelVersion, Registry, RegistryError, RegistryIntegrityError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionRecord:
    """What a prediction route tells its observer about one request it answered."""

    request_id: str | None
    """The id labels will name (``None`` when the request failed before it had one)."""
    version: int | None
    """The version that answered (``None`` when the request failed before one was chosen)."""
    status: int
    """The HTTP status of the answer."""
    latency_s: float
    """From the route receiving the request to its predictions being ready."""
    features: np.ndarray | None = None
    """The ``(rows, features)`` float32 input; ``None`` unless ``status`` is 200."""
    probabilities: np.ndarray | None = None
    """The ``(rows, classes)`` softmax of the logits; ``None`` unless ``status`` is 200."""


class PredictionObserver(Protocol):
    """Told about every prediction request, answered or refused.

    Called on the app's event loop, before the response is sent, so it must not block: queue
    the work and do it elsewhere (as :class:`~serving.monitoring.replica.ReplicaMonitor` does).
    An exception is logged and otherwise ignored.
    """

    def observe(self, record: PredictionRecord) -> None: ...


class NoOpObserver:
    """The default :class:`PredictionObserver`: ignores everything."""

    def observe(self, record: PredictionRecord) -> None:
        return None


class ModelChooser(Protocol):
    """Picks the model that answers a prediction request.

    ``pinned_version`` is the version a ``/versions/{version}/`` route names (``None``
    otherwise); a chooser returns that version's model if it serves it, else any model
    (the route answers 404 when the versions differ). ``None`` when no model is loaded yet.
    :class:`ModelHolder` is the default; a canary replaces it
    (:class:`~serving.monitoring.replica.CanaryChooser`).
    """

    def choose(self, request_id: str, pinned_version: int | None) -> LoadedModel | None: ...


class ModelUnavailableError(RuntimeError):
    """No version of the alias can be loaded (missing, unreadable or failing its hash)."""


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One registry version with a live onnxruntime session; never changes once built."""

    source: ModelVersion
    session: Any  # onnxruntime.InferenceSession

    @property
    def version(self) -> int:
        return self.source.version

    @property
    def name(self) -> str:
        return self.source.manifest.model_name

    @property
    def input_name(self) -> str:
        return self.source.manifest.input_schema.name

    @property
    def output_name(self) -> str:
        return self.source.manifest.output_schema.name

    @property
    def feature_names(self) -> list[str]:
        return self.source.manifest.input_schema.feature_names

    @property
    def class_names(self) -> list[str]:
        return self.source.manifest.output_schema.class_names

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def run(self, features: np.ndarray) -> np.ndarray:
        """Logits ``(rows, classes)`` float32 for float32 ``features`` ``(rows, features)``."""
        (logits,) = self.session.run([self.output_name], {self.input_name: features})
        return logits


def load_model(source: ModelVersion, *, intra_op_num_threads: int = 1) -> LoadedModel:
    """Verify ``source`` against its manifest and open an onnxruntime session over it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_num_threads
    options.inter_op_num_threads = 1
    return LoadedModel(source, source.load_session(sess_options=options))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class AliasMove:
    """What an admin route did to the served alias."""

    alias: str
    previous_version: int | None
    version: int


class ModelHolder:
    """The current model of one process, following a registry alias.

    Args:
        registry: where versions and aliases live.
        alias: the alias to serve.
        previous_alias: where :meth:`promote` records the version it replaced, and what
            :meth:`rollback` returns to; also the fallback when the alias's version fails
            its hash at start-up.
        candidate_alias: what :meth:`promote` promotes when given no version.
        intra_op_num_threads: onnxruntime threads per session.
    """

    def __init__(
        self,
        registry: Registry,
        alias: str,
        *,
        previous_alias: str | None = None,
        candidate_alias: str = "candidate",
        intra_op_num_threads: int = 1,
    ) -> None:
        self.registry = registry
        self.alias = alias
        self.previous_alias = previous_alias or f"{alias}-previous"
        self.candidate_alias = candidate_alias
        self.intra_op_num_threads = intra_op_num_threads
        self._current: LoadedModel | None = None
        # The alias target the holder last acted on, loaded or refused; a refused version is
        # not retried until the alias moves again.
        self._seen_target: int | None = None
        self._swap_lock = asyncio.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """The model new requests use; ``None`` until :meth:`load` succeeds."""
        return self._current

    def choose(self, request_id: str, pinned_version: int | None) -> LoadedModel | None:
        """The :class:`ModelChooser` of a process without a canary: the current model."""
        return self._current

    def load(self) -> LoadedModel:
        """Load the alias's version (blocking). If its file fails the hash, fall back to the
        previous alias's version, so the last good model keeps serving."""
        try:
            target = self._resolve(self.alias)
            model = self._load_version(target)
        except RegistryIntegrityError as error:
            fallback = self._resolve_or_none(self.previous_alias)
            if fallback is None or fallback == target:
                raise ModelUnavailableError(str(error)) from error
            logger.error(
                "%s; serving version %d (%s) instead", error, fallback, self.previous_alias
            )
            try:
                model = self._load_version(fallback)
            except RegistryError as fallback_error:
                raise ModelUnavailableError(f"{error}; and {fallback_error}") from fallback_error
        except RegistryError as error:
            raise ModelUnavailableError(str(error)) from error
        self._current = model
        self._seen_target = target
        return model

    async def refresh(self) -> bool:
        """Swap to the alias's version if the alias moved; ``True`` when a swap happened."""
        async with self._swap_lock:
            target = await asyncio.to_thread(self._resolve_or_none, self.alias)
            if target is None or target == self._seen_target:
                return False
            self._seen_target = target
            if self._current is not None and self._current.version == target:
                return False
            try:
                model = await asyncio.to_thread(self._load_version, target)
            except RegistryError as error:
                logger.error("not swapping to version %d: %s", target, error)
                return False
            previous = self._current
            self._current = model
            logger.info(
                "now serving version %d (was %s)",
                target,
                previous.version if previous is not None else "nothing",
            )
            return True

    async def watch_alias(self, poll_interval_s: float) -> None:
        """Follow the alias forever (run it as a task; cancel it to stop)."""
        while True:
            await asyncio.sleep(poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # keep watching: the next poll may succeed
                logger.exception("polling alias %r failed", self.alias)

    def verify_current(self) -> None:
        """Re-hash the served file; raise :class:`RegistryIntegrityError` on a mismatch."""
        model = self._current
        if model is None:
            raise ModelUnavailableError("no model loaded")
        model.source.verify()

    async def promote(self, version: int | None = None) -> AliasMove:
        """Point the alias at ``version`` (default: the candidate alias's), remember the old
        target in the previous alias, and swap this process now.

        Raises :class:`RegistryError` for an unknown version or missing candidate and
        :class:`RegistryIntegrityError` for a version whose file fails its hash (nothing moves).
        """
        if version is None:
            version = await asyncio.to_thread(self._resolve, self.candidate_alias)
        return await self._move_alias(version)

    async def rollback(self, version: int | None = None) -> AliasMove:
        """Point the alias back at ``version`` (default: the previous alias's) and swap this
        process now; the version rolled back from becomes the previous alias's target."""
        if version is None:
            version = self._resolve_or_none(self.previous_alias)
            if version is None:
                raise RegistryError(
                    f"nothing to roll back to: alias {self.previous_alias!r} is not set"
                )
        return await self._move_alias(version)

    async def _move_alias(self, version: int) -> AliasMove:
        previous = await asyncio.to_thread(
            self.registry.move_alias, self.alias, version, previous_alias=self.previous_alias
        )
        await self.refresh()
        return AliasMove(self.alias, previous, version)

    def _load_version(self, version: int) -> LoadedModel:
        return load_model(
            self.registry.get(version), intra_op_num_threads=self.intra_op_num_threads
        )

    def _resolve(self, alias: str) -> int:
        return self.registry.resolve(alias)

    def _resolve_or_none(self, alias: str) -> int | None:
        try:
            return self.registry.resolve(alias)
        except RegistryError:
            return None
