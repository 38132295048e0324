"""One socket write per response: the status line and headers leave with the body.

uvicorn writes a response's headers when the app sends ``http.response.start`` and its body
when the app sends ``http.response.body``: two writes, and in a Serve replica the two ASGI
messages come one at a time from the app's thread. A replica killed between them leaves the
client (through HAProxy) with headers and no body, which nothing in front of the replica can
retry: measured, 1 request in about 15 replica kills under 4 clients (``SD--`` in HAProxy's
log, ``peer closed connection without sending complete message body`` at the client).

:func:`write_headers_with_body` makes every uvicorn response cycle in this process hold the
header bytes and write them together with the first part of the body (or alone once the
response is finished without one, or when the connection closes). A process that dies
before that write leaves an empty response, which HAProxy retries on another replica
(:mod:`serving.ingress`). It patches uvicorn's ``RequestResponseCycle.send`` (httptools and
h11 implementations) once per process; the replica calls it in its constructor, before
Serve starts the replica's own HTTP server.
"""

from __future__ import annotations

import functools
from typing import Any

_PATCHED = "_trimtab_headers_with_body"


class _HeadersWithBody:
    """A transport that holds its first write (the headers) until the next one."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._holding = True

    def write(self, data: bytes) -> None:
        if self._holding:
            self._held, self._holding = bytes(data), False
            return
        if self._held is not None:
            data, self._held = self._held + bytes(data), None
        self._transport.write(data)

    def flush(self) -> None:
        """Write what is held (a response that ended without a body write)."""
        self._holding = False
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _patch(cycle_class: type) -> None:
    if getattr(cycle_class, _PATCHED, False):
        return
    original = cycle_class.send

    @functools.wraps(original)
    async def send(self: Any, message: Any) -> None:
        if message["type"] == "http.response.start" and not isinstance(
            self.transport, _HeadersWithBody
        ):
            self.transport = _HeadersWithBody(self.transport)
        await original(self, message)
        if message["type"] != "http.response.start" and isinstance(
            self.transport, _HeadersWithBody
        ):
            self.transport.flush()

    cycle_class.send = send
    setattr(cycle_class, _PATCHED, True)


def write_headers_with_body() -> None:
    """Patch uvicorn in this process (idempotent); see the module docstring."""
    from uvicorn.protocols.http import h11_impl

    _patch(h11_impl.RequestResponseCycle)
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # httptools not installed: uvicorn uses h11
        return
    _patch(httptools_impl.RequestResponseCycle)
