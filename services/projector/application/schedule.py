"""The daily reconciliation's schedule: a durable timer (libs/application/timers.py) in the projector,
due at the configured local time (CLOSELOOP_RECONCILE_AT, e.g. 03:00, in CLOSELOOP_RECONCILE_TIMEZONE,
Asia/Taipei by default).

One run per day across replicas: the timer row is claimed by one replica at a time (lease), and the
run's id is the local date (`daily-20250310`), whose ReconciliationStarted is appended to a stream
that must not exist yet, so a second claim of the same day (a replica that took over an expired
lease) starts nothing. The handler re-arms the timer for the next day before it runs, so a run
that fails or a replica that dies does not lose the schedule.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from libs.application import timers
from libs.application.timers import Timer
from libs.application.unit_of_work import CommandContext
from services.projector.application.reconciliation import Reconciler

log = logging.getLogger("closeloop.projector.schedule")

TIMER_KIND = "daily_reconciliation"
_AT = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


def parse_at(text: str) -> time:
    """HH:MM or HH:MM:SS (24 h)."""
    m = _AT.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a time of day such as 03:00 (HH:MM or HH:MM:SS, 24 h)")
    return time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def next_due(now: datetime, at: time, tz: ZoneInfo) -> datetime:
    """The first moment at or after `now` that is `at` in `tz` (in UTC)."""
    local = now.astimezone(tz)
    due = datetime.combine(local.date(), at, tz)
    if due < local:
        due = datetime.combine(local.date() + timedelta(days=1), at, tz)
    return due.astimezone(UTC)


def run_id_for(due: datetime, tz: ZoneInfo) -> str:
    return f"daily-{due.astimezone(tz).strftime('%Y%m%d')}"


class DailyReconciliation:
    """Arms the timer and runs the day's reconciliation when it fires."""

    def __init__(self, reconciler: Reconciler, *, owner: str, at: time, tz: ZoneInfo, repair: bool = False,
                 actor: str = "projector-scheduler") -> None:
        self.reconciler = reconciler
        self.owner = owner
        self.at = at
        self.tz = tz
        self.repair = repair
        self.actor = actor
        self.timer_id = f"{owner}-daily-reconciliation"
        self.runs: list[str] = []

    @property
    def setting(self) -> str:
        return f"{self.at.isoformat()} {self.tz.key}"

    async def arm(self, pool: asyncpg.Pool, now: datetime | None = None) -> datetime:
        """Make sure the timer exists. A timer armed under another setting (the configured time changed)
        is moved; a due one that has not fired yet is left to fire (a restart after the hour must not
        skip the day). Returns its due time."""
        due = next_due(now or datetime.now(UTC), self.at, self.tz)
        row = await pool.fetchrow(
            """INSERT INTO timers (timer_id, owner, kind, stream_id, due_at, payload)
               VALUES ($1, $2, $3, 'reconciliation-daily', $4, $5)
               ON CONFLICT (timer_id) DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload,
                   fired_at = NULL, attempts = 0, last_error = NULL, locked_until = NULL
                WHERE timers.payload->>'at' IS DISTINCT FROM EXCLUDED.payload->>'at' OR timers.fired_at IS NOT NULL
               RETURNING due_at""",
            self.timer_id, self.owner, TIMER_KIND, due, {"at": self.setting})
        if row is not None:
            return row["due_at"]
        return await pool.fetchval("SELECT due_at FROM timers WHERE timer_id = $1", self.timer_id)

    async def on_due(self, timer: Timer) -> None:
        """The timer fired: re-arm it for the next day, then run today's reconciliation (once)."""
        next_at = next_due(max(datetime.now(UTC), timer.due_at) + timedelta(seconds=1), self.at, self.tz)
        async with self.reconciler.store.pool.acquire() as conn:
            await timers.schedule(conn, self.timer_id, self.owner, TIMER_KIND, "reconciliation-daily", next_at,
                                  {"at": self.setting})
        ctx = CommandContext(actor=self.actor, role="service", correlation_id=str(uuid.uuid4()),
                             reason=f"daily reconciliation at {self.setting}")
        run_id, created = await self.reconciler.start(ctx, trigger="schedule", repair=self.repair,
                                                      run_id=run_id_for(timer.due_at, self.tz))
        if not created:
            log.info("reconciliation %s already exists (another replica ran it)", run_id)
            return
        self.runs.append(run_id)
        try:
            await self.reconciler.run(run_id, ctx)
        except Exception:  # recorded on the run (ReconciliationFailed); the schedule goes on
            log.exception("daily reconciliation %s failed", run_id)
