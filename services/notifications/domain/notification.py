"""One message to one recipient on one channel: the Notification aggregate (stream
`notification-{id}`), its dedupe key and the retry schedule.

pending --sent--> sent
pending | retrying --failed (attempts left)--> retrying --...
pending | retrying --failed (permanent, or the last attempt)--> gave_up

The id is derived from the dedupe key (source id + channel + template), so the same cause can never
make two messages: the outbox row's unique key refuses the second insert, and the stream of the
derived id already exists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.events import DomainEvent
from services.notifications.domain.events import (
    NOTIFICATION_CATEGORY,
    NotificationFailed,
    NotificationGaveUp,
    NotificationQueued,
    NotificationSent,
)

_NAMESPACE = uuid.UUID("6f1f3d1e-93a4-5b0e-9a57-6e6f74696679")


def dedupe_key(source_id: str, channel: str, template: str) -> str:
    """What makes a message unique: the event (or timer firing) that caused it, the channel and the
    template. A redelivered event has the same id, hence the same key."""
    return f"{source_id}:{channel}:{template}"


def notification_id(key: str) -> str:
    """A stable id from the dedupe key (UUID v5), so that retries of the same cause name the same stream."""
    return str(uuid.uuid5(_NAMESPACE, key))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: after failed attempt n the next one waits base * factor**(n-1), capped at
    max_delay; after `max_attempts` failed attempts the message is given up."""

    max_attempts: int = 8
    base_seconds: float = 2.0
    factor: float = 2.0
    max_delay_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_seconds <= 0 or self.factor < 1 or self.max_delay_seconds < self.base_seconds:
            raise ValueError("backoff needs base > 0, factor >= 1 and max_delay >= base")

    def delay_after(self, attempt: int) -> timedelta:
        """The wait after failed attempt `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempts are counted from 1")
        return timedelta(seconds=min(self.base_seconds * self.factor ** (attempt - 1), self.max_delay_seconds))

    def next_attempt_at(self, attempt: int, failed_at: datetime) -> datetime | None:
        """When to try again after failed attempt `attempt`; None when it was the last one."""
        if attempt >= self.max_attempts:
            return None
        return failed_at + self.delay_after(attempt)

    def schedule(self) -> list[timedelta]:
        """Every wait between attempts, in order (max_attempts - 1 of them)."""
        return [self.delay_after(n) for n in range(1, self.max_attempts)]


class NotificationStatus(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    GAVE_UP = "gave_up"


MACHINE = StateMachine("notification", {
    NotificationStatus.PENDING: {"record_sent": NotificationStatus.SENT,
                                 "record_failure": NotificationStatus.RETRYING},
    NotificationStatus.RETRYING: {"record_sent": NotificationStatus.SENT,
                                  "record_failure": NotificationStatus.RETRYING},
    NotificationStatus.SENT: {},
    NotificationStatus.GAVE_UP: {},
})


class Notification(Aggregate):
    category = NOTIFICATION_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: NotificationStatus | None = None
        self.queued: NotificationQueued | None = None
        self.attempts = 0
        self.max_attempts = 1
        self.next_attempt_at: datetime | None = None
        self.last_error: str | None = None
        self.sent_at: datetime | None = None

    # --- commands -------------------------------------------------------------------------------
    @classmethod
    def queue(cls, queued: NotificationQueued) -> Notification:
        if queued.notification_id != notification_id(queued.dedupe_key):
            raise ValueError("the notification id must derive from its dedupe key")
        n = cls(queued.notification_id)
        n._record(queued)
        return n

    def record_sent(self, attempt: int, sender: str, at: datetime) -> bool:
        """The sender accepted attempt `attempt`. False (nothing recorded) when that attempt's outcome is
        already known, e.g. a replica whose lease had expired sent it too."""
        if not self._is_next(attempt):
            return False
        assert self.status is not None
        MACHINE.check(self.id, self.status, "record_sent")
        self._record(NotificationSent(notification_id=self.id, attempt=attempt, sender=sender, at=at))
        return True

    def record_failure(self, attempt: int, error: str, policy: RetryPolicy, at: datetime, *,
                       permanent: bool = False) -> bool:
        """Attempt `attempt` failed: schedule the next one by the backoff, or give up when the failure is
        permanent or no attempt is left. False when that attempt's outcome is already known."""
        if not self._is_next(attempt):
            return False
        assert self.status is not None
        MACHINE.check(self.id, self.status, "record_failure")
        error = error[:500]
        retry_at = None if permanent else policy.next_attempt_at(attempt, at)
        if retry_at is not None and attempt >= self.max_attempts:
            retry_at = None  # the attempts allowed when it was queued bound it, whatever the policy now
        self._record(NotificationFailed(notification_id=self.id, attempt=attempt, error=error, permanent=permanent,
                                        next_attempt_at=retry_at, at=at))
        if retry_at is None:
            reason = f"permanent failure: {error}" if permanent else f"{attempt} attempts failed; last: {error}"
            self._record(NotificationGaveUp(notification_id=self.id, attempts=attempt, reason=reason[:500], at=at))
        return True

    def _is_next(self, attempt: int) -> bool:
        return self.status in (NotificationStatus.PENDING, NotificationStatus.RETRYING) and \
            attempt == self.attempts + 1

    # --- state ----------------------------------------------------------------------------------
    def allowed_commands(self) -> list[str]:
        return MACHINE.allowed(self.status) if self.status else []

    def apply(self, event: DomainEvent) -> None:
        match event:
            case NotificationQueued():
                self.queued = event
                self.status = NotificationStatus.PENDING
                self.max_attempts = event.max_attempts
                self.next_attempt_at = event.at
            case NotificationSent():
                self.status = NotificationStatus.SENT
                self.attempts = event.attempt
                self.sent_at = event.at
                self.next_attempt_at = None
                self.last_error = None
            case NotificationFailed():
                self.status = NotificationStatus.RETRYING
                self.attempts = event.attempt
                self.last_error = event.error
                self.next_attempt_at = event.next_attempt_at
            case NotificationGaveUp():
                self.status = NotificationStatus.GAVE_UP
                self.next_attempt_at = None
