"""The dispatcher: sends what the outbox holds, with retries.

Each round claims the messages due now (a lease per row, application/outbox.py), sends each one
outside any transaction, then records the outcome with its event (NotificationSent, or
NotificationFailed with the next attempt's time by exponential backoff, then NotificationGaveUp
after the last attempt or a permanent failure) and the row, in one transaction. Retries are
durable: they are the row's `next_attempt_at`, which any dispatcher picks up after a restart.

Sending is at-least-once: a dispatcher that dies after the sender accepted a message and before
the outcome is recorded leaves the lease to expire, and the message is sent again. The sink
dedupes by notification id (SinkSender counts `deliveries`); an SMTP or SMS sender would pass the
notification id as its provider's idempotency key or Message-ID for the same effect.

The loop wakes on NOTIFY from the transaction that queued a message, and otherwise polls every
`poll_seconds` (retries that come due, a lost notification).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from libs.application.unit_of_work import CommandContext, UnitOfWork, execute
from libs.eventstore import EventStore
from libs.eventstore.errors import DATABASE_ERRORS
from services.notifications.adapters.senders import OutgoingMessage, Sender, SendError
from services.notifications.application import outbox
from services.notifications.application.metrics import FAILED, GAVE_UP, RETRIED, SENT
from services.notifications.domain.notification import Notification, NotificationStatus, RetryPolicy

log = logging.getLogger("closeloop.notifications.dispatcher")


@dataclass
class DispatchStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    gave_up: int = 0
    rounds: int = 0


@dataclass
class Dispatcher:
    store: EventStore
    sender: Sender
    policy: RetryPolicy
    owner: str
    clock: Callable[[], datetime]
    batch: int = 50
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    send_timeout_seconds: float = 30.0
    stats: DispatchStats = field(default_factory=DispatchStats)

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None

    async def dispatch_due(self, *, only: Sequence[str] | None = None) -> int:
        """Send every message due now (only those ids, when given); returns how many were attempted."""
        attempted = 0
        while True:
            rows = await outbox.claim_due(self.store.pool, self.owner, self.clock(), batch=self.batch,
                                          lease_seconds=self.lease_seconds, only=only)
            for row in rows:
                await self._attempt(row)
            attempted += len(rows)
            self.stats.rounds += 1
            if len(rows) < self.batch:
                return attempted

    async def _attempt(self, row: asyncpg.Record) -> None:
        message = OutgoingMessage(notification_id=row["notification_id"], channel=row["channel"],
                                  recipient=row["recipient"], address=row["address"], locale=row["locale"],
                                  template=row["template"], subject_id=row["subject_id"], title=row["title"],
                                  body=row["body"], attempt=row["attempts"] + 1)
        error: str | None = None
        permanent = False
        try:
            await asyncio.wait_for(self.sender.send(message), self.send_timeout_seconds)
        except SendError as exc:
            error, permanent = str(exc) or type(exc).__name__, exc.permanent
        except Exception as exc:  # a sender's unexpected error is a transient failure, retried
            error = f"{type(exc).__name__}: {exc}"
        try:
            await self._record(message, error, permanent)
        except Exception:
            # Outcome not recorded (database trouble): the lease runs out and it is sent again
            # (at-least-once; the sink dedupes by notification id).
            log.exception("outcome of %s attempt %d not recorded", message.notification_id, message.attempt)

    async def _record(self, message: OutgoingMessage, error: str | None, permanent: bool) -> None:
        ctx = CommandContext(actor="notifications-dispatcher", role="service",
                             correlation_id=f"notification-{message.notification_id}",
                             causation_id=message.notification_id)

        async def fn(uow: UnitOfWork) -> dict[str, str]:
            n = await uow.get(Notification, message.notification_id)
            at = self.clock()
            if error is None:
                changed = n.record_sent(message.attempt, self.sender.name, at)
            else:
                changed = n.record_failure(message.attempt, error, self.policy, at, permanent=permanent)
            if changed:
                await outbox.save(uow.conn, n, at)
            return {"status": n.status.value if n.status else ""}

        result = await execute(self.store, ctx, "notifications:dispatch", fn)
        if not result.appended:
            await outbox.release(self.store.pool, message.notification_id)  # already known: leave it be
            return
        channel = message.channel
        status = result.response["status"]
        if error is None:
            SENT.labels(channel).inc()
            self.stats.sent += 1
            return
        FAILED.labels(channel).inc()
        self.stats.failed += 1
        if status == NotificationStatus.GAVE_UP.value:
            GAVE_UP.labels(channel).inc()
            self.stats.gave_up += 1
            log.warning("notification %s given up after attempt %d: %s", message.notification_id, message.attempt,
                        error)
        else:
            RETRIED.labels(channel).inc()
            self.stats.retried += 1
            log.info("notification %s attempt %d failed, retried later: %s", message.notification_id,
                     message.attempt, error)

    # --- the loop -------------------------------------------------------------------------------
    async def listen(self) -> None:
        """A dedicated connection that LISTENs for queued messages (no-op without a DSN: polling only)."""
        if self.store.dsn is None:
            return
        self._listener = await asyncpg.connect(self.store.dsn)
        await self._listener.add_listener(outbox.WAKE_CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.owner:
            self._wake.set()

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.dispatch_due()
            except DATABASE_ERRORS as exc:
                log.warning("dispatcher round failed: %s", exc)
            waker = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            _, pending = await asyncio.wait([waker, stopper], timeout=self.poll_seconds,
                                            return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        await self.close()
