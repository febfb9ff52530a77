"""Durable timers (payment deadlines, SLAs).

A timer row is written in the same transaction as the event that arms it, so it exists
exactly when that event does, and it survives any restart. The owning service's
TimerRunner fires due timers: it claims a batch with FOR UPDATE SKIP LOCKED (several
replicas never fire the same timer at once), runs the handler, and marks the timer
fired. Handlers must be idempotent (e.g. expiring a deadline of an order that was paid
meanwhile is a no-op), because a crash after the handler's own commit and before the
timer is marked fires it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

log = logging.getLogger("closeloop.timers")


@dataclass(frozen=True)
class Timer:
    timer_id: str
    owner: str
    kind: str
    stream_id: str
    due_at: datetime
    payload: dict[str, Any]
    attempts: int


async def schedule(conn: asyncpg.Connection, timer_id: str, owner: str, kind: str, stream_id: str,
                   due_at: datetime, payload: dict[str, Any]) -> None:
    await conn.execute(
        """INSERT INTO timers (timer_id, owner, kind, stream_id, due_at, payload) VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (timer_id) DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload,
                                                fired_at = NULL, attempts = 0, last_error = NULL""",
        timer_id, owner, kind, stream_id, due_at, payload)


async def cancel(conn: asyncpg.Connection, timer_id: str) -> None:
    await conn.execute("DELETE FROM timers WHERE timer_id = $1 AND fired_at IS NULL", timer_id)


TimerHandler = Callable[[Timer], Awaitable[None]]


class TimerRunner:
    def __init__(self, pool: asyncpg.Pool, owner: str, handlers: dict[str, TimerHandler], *,
                 poll_seconds: float = 0.5, batch: int = 50) -> None:
        self.pool = pool
        self.owner = owner
        self.handlers = handlers
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.fired = 0

    async def fire_due(self) -> int:
        """Fire every timer due now; returns how many fired."""
        fired = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    """SELECT timer_id, owner, kind, stream_id, due_at, payload, attempts FROM timers
                        WHERE owner = $1 AND fired_at IS NULL AND due_at <= now()
                        ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED""", self.owner, self.batch)
                for row in rows:
                    timer = Timer(**dict(row))
                    handler = self.handlers.get(timer.kind)
                    try:
                        if handler is None:
                            raise LookupError(f"no handler for timer kind {timer.kind!r}")
                        await handler(timer)
                    except Exception as exc:
                        # Retry later with a growing delay; the error stays visible on the row.
                        delay = min(2 ** timer.attempts, 300)
                        log.warning("timer %s failed (attempt %d): %s", timer.timer_id, timer.attempts + 1, exc)
                        await conn.execute(
                            """UPDATE timers SET attempts = attempts + 1, last_error = $2,
                                      due_at = now() + make_interval(secs => $3) WHERE timer_id = $1""",
                            timer.timer_id, str(exc)[:500], float(delay))
                        continue
                    await conn.execute("UPDATE timers SET fired_at = now() WHERE timer_id = $1", timer.timer_id)
                    fired += 1
            if len(rows) < self.batch:
                break
        self.fired += fired
        return fired

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.fire_due()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("timer runner error: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
