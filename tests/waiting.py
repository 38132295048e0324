"""Wait on observed state, never on a fixed sleep: poll a condition until it holds or a
deadline passes. The deadline is a ceiling for a loaded machine, not a margin a test relies on.

A plain module, not a test module: import it as ``from tests.waiting import wait_until``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.05


def wait_until(condition: Callable[[], T], timeout_s: float, what: str) -> T:
    """Call ``condition`` until it returns something truthy and return that; raise
    ``AssertionError`` naming ``what`` if ``timeout_s`` passes first.

    >>> wait_until(lambda: 42, 1.0, "the answer")
    42
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


async def wait_until_async(condition: Callable[[], T], timeout_s: float, what: str) -> T:
    """:func:`wait_until` inside an event loop: yields to the loop between polls."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)
