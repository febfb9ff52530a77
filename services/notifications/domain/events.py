"""The notifications service's events (topic `notifications.events`): the after-sales contract
(docs/after-sales.md). Stream `notification-{notification_id}`, and `sla-{subject}` for SLA clocks.

`SlaBreachWarning` is the contract event other services (operations) read; the others are this
service's internal events, published on the same topic: the outbox of one message
(`NotificationQueued` with the rendered text, then `NotificationSent`, `NotificationFailed` per
failed attempt, `NotificationGaveUp`) and the SLA clocks of a subject (`SlaClockStarted`,
`SlaClockStopped`, `SlaTrackingEnded`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field

from libs.domain.events import DomainEvent
from libs.domain.types import Code, Id, Text

TOPIC = "notifications.events"
NOTIFICATION_CATEGORY = "notification"
SLA_CATEGORY = "sla"

Channel = Literal["email", "sms", "in_app"]
Audience = Literal["customer", "operations"]
NotificationLocale = Literal["zh-TW", "en"]
SubjectType = Literal["rma", "shipment"]
DedupeKey = Annotated[str, Field(min_length=1, max_length=300)]


class NotificationEvent(DomainEvent):
    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC


class SlaBreachWarning(NotificationEvent):
    """A stage of an RMA or shipment runs late against its SLA (seed 001, case 6)."""

    subject_type: Literal["rma", "shipment"]
    subject_id: Id
    stage: Code
    started_at: AwareDatetime
    due_at: AwareDatetime
    at: AwareDatetime


# --- internal: the outbox of one message ------------------------------------------------------------
class NotificationQueued(NotificationEvent):
    """A message was rendered and written to the outbox, in the transaction of the reaction that caused
    it. `dedupe_key` (source id + channel + template) is unique: a redelivered event adds nothing;
    `stage_key` (audience, subject, stage, channel) makes it one message per stage and channel."""

    notification_id: Id
    dedupe_key: DedupeKey
    stage_key: DedupeKey | None = None
    audience: Audience
    recipient: Id  # the customer's id, or "operations"
    address: Annotated[str, Field(min_length=1, max_length=254)]  # e-mail address, phone number or in-app inbox
    channel: Channel
    locale: NotificationLocale
    template: Code
    subject_type: SubjectType
    subject_id: Id
    stage: Code
    source_id: DedupeKey  # the event (or SLA timer firing) that caused the message
    source_event_type: Annotated[str, Field(min_length=1, max_length=100)]
    title: Annotated[str, Field(max_length=500)]
    body: Annotated[str, Field(max_length=10_000)]
    max_attempts: Annotated[int, Field(ge=1)]
    at: AwareDatetime


class NotificationSent(NotificationEvent):
    """The sender accepted the message (attempt n)."""

    notification_id: Id
    attempt: Annotated[int, Field(ge=1)]
    sender: Code
    at: AwareDatetime


class NotificationFailed(NotificationEvent):
    """Attempt n failed; the next attempt is due at `next_attempt_at` (exponential backoff), or never when
    the failure is permanent or it was the last attempt (a NotificationGaveUp follows)."""

    notification_id: Id
    attempt: Annotated[int, Field(ge=1)]
    error: Text
    permanent: bool = False
    next_attempt_at: AwareDatetime | None = None
    at: AwareDatetime


class NotificationGaveUp(NotificationEvent):
    """No more attempts: the message stays in the outbox, visible as gave_up."""

    notification_id: Id
    attempts: Annotated[int, Field(ge=1)]
    reason: Text
    at: AwareDatetime


# --- internal: SLA clocks of a subject (stream sla-{subject_id}) ----------------------------------
class SlaClockStarted(NotificationEvent):
    """The subject entered `stage`: its clock runs until the next stage, due `sla_seconds` later."""

    subject_type: SubjectType
    subject_id: Id
    stage: Code
    sla_seconds: Annotated[int, Field(ge=1)]
    started_at: AwareDatetime
    due_at: AwareDatetime
    at: AwareDatetime


class SlaClockStopped(NotificationEvent):
    """The subject left `stage` (reached a later one or ended); `late` when after the due time."""

    subject_type: SubjectType
    subject_id: Id
    stage: Code
    started_at: AwareDatetime
    due_at: AwareDatetime
    stopped_at: AwareDatetime
    late: bool
    at: AwareDatetime


class SlaTrackingEnded(NotificationEvent):
    """The subject is done (delivered, closed, rejected, cancelled): no clock starts any more."""

    subject_type: SubjectType
    subject_id: Id
    reason: Code
    ended_at: AwareDatetime
    at: AwareDatetime


__all__ = [
    "NOTIFICATION_CATEGORY", "SLA_CATEGORY", "TOPIC", "Audience", "Channel", "NotificationEvent",
    "NotificationFailed", "NotificationGaveUp", "NotificationLocale", "NotificationQueued", "NotificationSent",
    "SlaBreachWarning", "SlaClockStarted", "SlaClockStopped", "SlaTrackingEnded", "SubjectType",
]
