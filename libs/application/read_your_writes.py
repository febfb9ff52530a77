"""Read-your-writes: wait until a projection has applied a given stream version.

The projector NOTIFYs `closeloop_projection` in the transaction that updates a read
model. One LISTEN connection per process wakes every waiter, which then re-reads the
projection's version of the stream (an index lookup). No busy polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg

CHANNEL = "closeloop_projection"


class ProjectionWaiter:
    def __init__(self, pool: asyncpg.Pool, dsn: str | None) -> None:
        self.pool = pool
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        if self.dsn:
            self._conn = await asyncpg.connect(self.dsn)
            await self._conn.add_listener(CHANNEL, self._on_notify)

    def _on_notify(self, *_: object) -> None:
        asyncio.get_running_loop().create_task(self._notify_all())

    async def _notify_all(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    async def version(self, projection: str, stream_id: str) -> int:
        v = await self.pool.fetchval(
            "SELECT version FROM projection_streams WHERE projection = $1 AND stream_id = $2", projection, stream_id)
        return int(v or 0)

    async def wait(self, projection: str, stream_id: str, version: int, timeout: float) -> tuple[bool, float]:
        """(caught up?, seconds waited). Never raises on timeout."""
        started = time.perf_counter()
        deadline = started + timeout
        # The version is checked while holding the condition's lock, so a notification that
        # arrives between the check and wait() is not lost (notify needs the same lock).
        async with self._changed:
            while True:
                if await self.version(projection, stream_id) >= version:
                    return True, time.perf_counter() - started
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return False, time.perf_counter() - started
                # Without a LISTEN connection fall back to a short poll.
                wait_for = min(remaining, 0.05 if self._conn is None else 1.0)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait_for)
