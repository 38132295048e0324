"""Admin routes of the inference service: move the served alias (bearer token).

``POST /admin/promote`` points the alias at a version (default: the candidate alias's),
``POST /admin/rollback`` points it back (default: the version before the last move). Both go
through :meth:`serving.registry.Registry.move_alias` (via the holder), so the file's hash is
checked before anything moves; this replica swaps at once, the others within a poll.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations.

import logging
from typing import Any

from fastapi import APIRouter

from serving.http_errors import ADMIN_ERRORS, ApiError
from serving.http_schemas import AliasMoveRequest, AliasMoveResponse
from serving.http_service import AdminOnly, Service, ServiceState
from serving.inference import AliasMove
from serving.registry import RegistryError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=AdminOnly)


async def _move(state: ServiceState, action: str, body: AliasMoveRequest | None) -> dict[str, Any]:
    holder = state.holder
    version = body.version if body is not None else None
    if version is not None and version not in holder.registry.versions():
        raise ApiError(404, f"no version {version} in the registry")
    try:
        moved: AliasMove = await (
            holder.promote(version) if action == "promote" else holder.rollback(version)
        )
    except RegistryError as error:  # RegistryIntegrityError included: nothing moved
        raise ApiError(409, f"{action} refused: {error}") from None
    await state.alias_moved(moved)
    served = holder.current
    logger.warning(
        "admin %s: alias %s %s -> %s", action, moved.alias, moved.previous_version, moved.version
    )
    return {
        "alias": moved.alias,
        "version": moved.version,
        "previous_version": moved.previous_version,
        "served_version": served.version if served is not None else moved.version,
    }


@router.post("/promote", response_model=AliasMoveResponse, responses=ADMIN_ERRORS)
async def promote(state: Service, body: AliasMoveRequest | None = None) -> dict[str, Any]:
    """Point the served alias at ``version`` (default: the candidate alias's)."""
    return await _move(state, "promote", body)


@router.post("/rollback", response_model=AliasMoveResponse, responses=ADMIN_ERRORS)
async def rollback(state: Service, body: AliasMoveRequest | None = None) -> dict[str, Any]:
    """Point the served alias back at ``version`` (default: the one before the last move)."""
    return await _move(state, "rollback", body)
