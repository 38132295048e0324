"""Errors of the inference service's HTTP API: every 4xx and 5xx is ``{"error": "..."}``.

:class:`ApiError` is what routes raise; :func:`add_error_handlers` turns it, FastAPI's
validation errors and Starlette's HTTP errors into that body, and documents each status in
the OpenAPI document (:func:`error_responses`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from serving.http_schemas import ErrorBody

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Answer ``status_code`` with ``{"error": message}``.

    ``version`` is the model version the request was served by when it failed (so the
    observer counts the status against it), if one was chosen.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        version: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers
        self.version = version


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


_STATUS_DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON, or x-request-id is invalid.",
    401: "Missing or wrong bearer token.",
    404: "Unknown model or version.",
    409: "The alias cannot move there (version fails its hash, nothing to move to).",
    413: "Request body larger than max_body_bytes.",
    415: "Request body is not application/json.",
    422: "Valid JSON that is not a valid request; the message names the field.",
    431: "Too many header lines, or too many bytes of them.",
    500: "Internal error.",
    503: "No model loaded yet, the request queue is full, or the monitoring service is "
    "unreachable; retry after Retry-After seconds.",
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each with the :class:`ErrorBody` schema."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status_code in status_codes:
        entry: dict[str, Any] = {
            "model": ErrorBody,
            "description": _STATUS_DESCRIPTIONS[status_code],
        }
        if status_code == 503:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                }
            }
        if status_code == 401:
            entry["headers"] = {
                "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
            }
        responses[status_code] = entry
    return responses


# 422 cannot happen on the read routes (their parameters are plain strings), but FastAPI
# documents its own 422 body for any route with parameters unless told otherwise.
READ_ERRORS = error_responses(400, 404, 422, 431, 500, 503)
INFER_ERRORS = error_responses(400, 404, 413, 415, 422, 431, 500, 503)
ADMIN_ERRORS = error_responses(400, 401, 404, 409, 413, 415, 422, 431, 500, 503)


def _describe_location(location: Sequence[str | int]) -> str:
    parts = list(location)
    prefix = ""
    if parts and parts[0] == "body":
        parts = parts[1:]
    elif parts and parts[0] in ("path", "query", "header"):
        prefix = f"{parts[0]} parameter "
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return prefix + (text or "body")


def describe_errors(errors: Sequence[dict[str, Any]], prefix: str = "", limit: int = 3) -> str:
    """pydantic's errors as one line that names each field."""
    described = []
    for error in errors[:limit]:
        where = _describe_location(error.get("loc", ()))
        if prefix:
            where = prefix + ("" if where.startswith("[") else ".") + where
        described.append(f"{where}: {error.get('msg', 'invalid')}")
    if len(errors) > limit:
        described.append(f"and {len(errors) - limit} more")
    return "; ".join(described)


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    errors = error.errors()
    if any(item.get("type") == "json_invalid" for item in errors):
        detail = next(item for item in errors if item.get("type") == "json_invalid")
        reason = detail.get("ctx", {}).get("error", "invalid JSON")
        position = detail.get("loc", ("body", "?"))[-1]
        return error_response(400, f"request body is not valid JSON: {reason} (at {position})")
    if isinstance(error.body, bytes | bytearray) and not _is_json(
        request.headers.get("content-type")
    ):
        given = request.headers.get("content-type") or "none"
        return error_response(415, f"Content-Type must be application/json, got {given}")
    body_errors = [item for item in errors if tuple(item.get("loc", ())) == ("body",)]
    if body_errors:
        if body_errors[0].get("type") == "missing":
            return error_response(422, "a JSON request body is required")
        return error_response(
            422, f"the request body must be a JSON object, got {error.body!r:.60}"
        )
    header_errors = [item for item in errors if tuple(item.get("loc", ()))[:1] == ("header",)]
    if header_errors:
        return error_response(400, describe_errors(header_errors))
    return error_response(422, describe_errors(errors))


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error_response(error.status_code, error.message, error.headers)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return error_response(error.status_code, str(error.detail), error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, ClientDisconnect):  # the client left, or the edge refused the body
        return error_response(400, "the request body ended early")
    logger.exception("unexpected error answering %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(error).__name__})")


async def answer_error(request: Request, error: Exception) -> JSONResponse:
    """The answer :func:`add_error_handlers` gives ``error``."""
    if isinstance(error, RequestValidationError):
        return await _validation_error(request, error)
    if isinstance(error, ApiError):
        return await _api_error(request, error)
    if isinstance(error, HTTPException):
        return await _http_error(request, error)
    return await _unexpected_error(request, error)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error with ``{"error": "..."}``."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
