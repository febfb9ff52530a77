"""Bounded polling for end-to-end tests: eventual consistency without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    """Poll `check` every 0.1 s until it returns something truthy (returned); AssertionError naming `what`
    and the last value seen after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not seen within {timeout} s (last: {last!r})")


async def holds(value: Any) -> Any:
    """`value` as an awaitable, for `until(what, lambda: holds(<expression>))` on plain state."""
    return value
