"""The outbox table (notifications) and the SLA clocks table, written in the caller's transaction
together with the events of the Notification / SlaClock aggregates."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.notifications.domain.events import NotificationQueued
from services.notifications.domain.notification import Notification
from services.notifications.domain.sla import SlaClock

WAKE_CHANNEL = "closeloop_notifications"


async def insert(conn: asyncpg.Connection, q: NotificationQueued, owner: str) -> bool:
    """Write a new message; False when its dedupe key (same cause) or stage key (stage already
    notified) is already there, in which case nothing is written."""
    row = await conn.fetchval(
        """INSERT INTO notifications (notification_id, owner, dedupe_key, stage_key, audience, recipient, address,
                                      channel, locale, template, subject_type, subject_id, stage, source_id,
                                      source_event_type, title, body, status, attempts, max_attempts,
                                      next_attempt_at, created_at, updated_at, version)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 'pending', 0, $18,
                   $19, $19, $19, 1)
           ON CONFLICT DO NOTHING RETURNING notification_id""",
        q.notification_id, owner, q.dedupe_key, q.stage_key, q.audience, q.recipient, q.address, q.channel, q.locale,
        q.template, q.subject_type, q.subject_id, q.stage, q.source_id, q.source_event_type, q.title, q.body,
        q.max_attempts, q.at)
    return row is not None


async def wake(conn: asyncpg.Connection, owner: str) -> None:
    """Wake the dispatchers when the transaction commits (NOTIFY is delivered at commit)."""
    await conn.execute("SELECT pg_notify($1, $2)", WAKE_CHANNEL, owner)


async def save(conn: asyncpg.Connection, n: Notification, at: datetime) -> None:
    """The row after the aggregate's new events (and the lease released)."""
    await conn.execute(
        """UPDATE notifications SET status = $2, attempts = $3, next_attempt_at = $4, last_error = $5, sent_at = $6,
                                    locked_until = NULL, updated_at = $7, version = $8
            WHERE notification_id = $1""",
        n.id, n.status.value if n.status else None, n.attempts, n.next_attempt_at, n.last_error, n.sent_at, at,
        n.version + len(n.pending))


async def release(pool: asyncpg.Pool, notification_id: str) -> None:
    await pool.execute("UPDATE notifications SET locked_until = NULL WHERE notification_id = $1", notification_id)


async def claim_due(pool: asyncpg.Pool, owner: str, now: datetime, *, batch: int, lease_seconds: float,
                    only: Sequence[str] | None = None) -> list[asyncpg.Record]:
    """Claim up to `batch` messages due now with a lease (a short transaction of its own). SKIP LOCKED
    and the lease keep two dispatchers off the same row; a dispatcher that dies mid-send leaves the
    lease to expire and another one sends it then (at-least-once)."""
    return await pool.fetch(
        """UPDATE notifications SET locked_until = $3::timestamptz + make_interval(secs => $4)
            WHERE notification_id IN (
                SELECT notification_id FROM notifications
                 WHERE owner = $1 AND status IN ('pending', 'retrying') AND next_attempt_at <= $3
                   AND (locked_until IS NULL OR locked_until < $3)
                   AND ($5::text[] IS NULL OR notification_id = ANY($5::text[]))
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING notification_id, channel, recipient, address, locale, template, subject_id, title, body, attempts""",
        owner, batch, now, float(lease_seconds), list(only) if only is not None else None)


async def next_due(pool: asyncpg.Pool, owner: str) -> datetime | None:
    return await pool.fetchval(
        "SELECT min(next_attempt_at) FROM notifications WHERE owner = $1 AND status IN ('pending', 'retrying')", owner)


async def save_clocks(conn: asyncpg.Connection, clock: SlaClock, at: datetime) -> None:
    """Every stage clock of the subject as the aggregate has it now."""
    rows = [(clock.id, c.stage, clock.subject_type, c.sla_seconds, c.started_at, c.due_at, c.stopped_at, c.late,
             c.breached_at, at) for c in clock.clocks.values()]
    if not rows:
        return
    await conn.executemany(
        """INSERT INTO notifications_sla_clocks (subject_id, stage, subject_type, sla_seconds, started_at, due_at,
                                                 stopped_at, late, breached_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (subject_id, stage) DO UPDATE SET stopped_at = EXCLUDED.stopped_at, late = EXCLUDED.late,
               breached_at = EXCLUDED.breached_at, updated_at = EXCLUDED.updated_at""", rows)
