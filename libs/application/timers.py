"""Durable timers (payment deadlines, SLAs).

A timer row is written in the same transaction as the event that arms it, so it exists
exactly when that event does, and it survives any restart. The owning service's
TimerRunner fires due timers: it claims a batch with a lease (UPDATE ... FOR UPDATE SKIP
LOCKED, so several replicas never claim the same timer), runs each handler outside
that short transaction, and marks the timer fired. A replica that dies mid-handler
leaves the lease to expire, and another replica fires the timer then. Handlers must be
idempotent (e.g. expiring a deadline of an order that was paid meanwhile is a no-op),
because a crash after the handler's own commit and before the timer is marked fires it
again.
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

from libs.eventstore.errors import DATABASE_ERRORS
from libs.observability import TIMERS_FIRED

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
                 poll_seconds: float = 0.5, batch: int = 50, lease_seconds: float = 60) -> None:
        self.pool = pool
        self.owner = owner
        self.handlers = handlers
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.lease_seconds = lease_seconds
        self.fired = 0

    async def fire_due(self) -> int:
        """Fire every timer due now; returns how many fired."""
        fired = 0
        while True:
            # Claim a batch with a lease (a short transaction); replicas skip claimed rows.
            rows = await self.pool.fetch(
                """UPDATE timers SET locked_until = now() + make_interval(secs => $3)
                    WHERE timer_id IN (
                        SELECT timer_id FROM timers
                         WHERE owner = $1 AND fired_at IS NULL AND due_at <= now()
                           AND (locked_until IS NULL OR locked_until < now())
                         ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                RETURNING timer_id, owner, kind, stream_id, due_at, payload, attempts""",
                self.owner, self.batch, self.lease_seconds)
            for row in sorted(rows, key=lambda r: r["due_at"]):
                timer = Timer(**dict(row))
                handler = self.handlers.get(timer.kind)
                try:
                    if handler is None:
                        raise LookupError(f"no handler for timer kind {timer.kind!r}")
                    await handler(timer)
                except Exception as exc:
                    # Retry later with a growing delay; the error stays visible on the row.
                    delay = min(2**timer.attempts, 300)
                    log.warning("timer %s failed (attempt %d): %s", timer.timer_id, timer.attempts + 1, exc)
                    await self.pool.execute(
                        """UPDATE timers SET attempts = attempts + 1, last_error = $2, locked_until = NULL,
                                  due_at = now() + make_interval(secs => $3) WHERE timer_id = $1""",
                        timer.timer_id, str(exc)[:500], float(delay))
                    continue
                # The handler may have deleted or re-armed the timer itself; only mark the
                # claim we made (same due_at) as fired.
                await self.pool.execute(
                    "UPDATE timers SET fired_at = now(), locked_until = NULL WHERE timer_id = $1 AND due_at = $2",
                    timer.timer_id, timer.due_at)
                TIMERS_FIRED.labels(timer.kind).inc()
                fired += 1
            if len(rows) < self.batch:
                break
        self.fired += fired
        return fired

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.fire_due()
            except DATABASE_ERRORS as exc:
                log.warning("timer runner error: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
