"""The checks in front of the app: request line and headers, body size, request id.

:class:`EdgeLimits` is a plain ASGI middleware. It runs in two places:

- in front of Ray Serve's own request handling, in Serve's proxy and in every replica's own
  HTTP server (direct ingress, HAProxy): Serve calls :func:`serve_middlewares`, named by
  ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (see :mod:`serving.ingress`), so a request
  that would make Serve fail (a non-UTF-8 ``x-request-id``) or hold memory (a chunked body
  without end) never reaches it;
- as the outermost layer of the FastAPI app itself (:func:`serving.http_api.create_http_app`),
  so the app under plain uvicorn or FastAPI's ``TestClient`` refuses the same requests.

What it refuses, always with ``{"error": "..."}`` and ``connection: close`` (the rest of a
refused body is never read):

- 431: more than ``max_headers`` header lines, or more than ``max_header_bytes`` of them;
- 400: an ``x-request-id`` that is not 1-128 printable ASCII characters; a header value that
  is not UTF-8 (Serve decodes several headers as UTF-8, and would answer 500); a
  ``Content-Length`` that is not a number;
- 413: a ``Content-Length`` over ``max_body_bytes`` (before a byte is read), or a chunked body
  the moment it crosses ``max_body_bytes``.

Limits under Serve come from the environment of the process (``TRIMTAB_MAX_BODY_BYTES``,
``TRIMTAB_MAX_HEADER_BYTES``, ``TRIMTAB_MAX_HEADERS``; see :func:`edge_environment`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.http_schemas import REQUEST_ID_PATTERN

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 8 * 1024
DEFAULT_MAX_HEADERS = 64

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN.encode())
_DIGITS = re.compile(rb"[0-9]{1,19}")


@dataclass(frozen=True)
class EdgeConfig:
    """Limits checked before the app sees a request."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    """Sum over header lines of name + value lengths."""
    max_headers: int = DEFAULT_MAX_HEADERS

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_header_bytes", "max_headers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_environment(cls) -> EdgeConfig:
        def read(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            return int(value) if value.isdecimal() else default

        return cls(
            max_body_bytes=read("TRIMTAB_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_header_bytes=read("TRIMTAB_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES),
            max_headers=read("TRIMTAB_MAX_HEADERS", DEFAULT_MAX_HEADERS),
        )

    def environment(self) -> dict[str, str]:
        """What :meth:`from_environment` reads back as this config."""
        return {
            "TRIMTAB_MAX_BODY_BYTES": str(self.max_body_bytes),
            "TRIMTAB_MAX_HEADER_BYTES": str(self.max_header_bytes),
            "TRIMTAB_MAX_HEADERS": str(self.max_headers),
        }


def json_error_messages(status: int, message: str) -> list[Message]:
    """The ASGI messages of a ``{"error": message}`` answer that closes the connection."""
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        },
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


def check_headers(headers: list[tuple[bytes, bytes]], config: EdgeConfig) -> tuple[int, str] | None:
    """``(status, message)`` for headers the edge refuses, else ``None``."""
    if len(headers) > config.max_headers:
        return 431, f"{len(headers)} header lines; the limit is {config.max_headers}"
    size = 0
    for name, value in headers:
        size += len(name) + len(value)
    if size > config.max_header_bytes:
        return 431, f"headers are {size} bytes; the limit is {config.max_header_bytes}"
    for name, value in headers:
        if not value.isascii():
            try:  # Serve decodes several headers as UTF-8 and fails (500) on other bytes
                value.decode("utf-8")
            except UnicodeDecodeError:
                return 400, f"header {name.decode('latin-1')!r} is not valid UTF-8"
        if name == b"x-request-id" and not _REQUEST_ID.fullmatch(value):
            return 400, "x-request-id must be 1 to 128 printable ASCII characters without spaces"
        if name == b"content-length":
            if not _DIGITS.fullmatch(value):
                return 400, "Content-Length must be a number"
            if int(value) > config.max_body_bytes:
                return (
                    413,
                    f"request body is {int(value)} bytes; the limit is {config.max_body_bytes}",
                )
    return None


class EdgeLimits:
    """Refuse what :func:`check_headers` refuses, and bodies that grow past the limit."""

    def __init__(self, app: ASGIApp, config: EdgeConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else EdgeConfig.from_environment()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = check_headers(scope["headers"], self.config)
        if refusal is not None:
            for message in json_error_messages(*refusal):
                await send(message)
            return
        limit = self.config.max_body_bytes
        received = 0
        started = refused = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the app answers after the 413: drop it
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if received <= limit:
                return message
            # Refuse now, and tell the app the client left: it stops reading, and nothing
            # more of the body is pulled in (the connection closes after the 413).
            if not started:
                for answer in json_error_messages(
                    413, f"request body exceeds the limit of {limit} bytes"
                ):
                    await send(answer)
            refused = True
            return {"type": "http.disconnect"}

        await self.app(scope, limited_receive, guarded_send)


def serve_middlewares() -> list[Any]:
    """Serve's HTTP proxy callback: the middlewares in front of every Serve app.

    Named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``; limits from the environment.
    """
    return [Middleware(EdgeLimits, config=EdgeConfig.from_environment())]
