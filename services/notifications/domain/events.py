"""The notifications service's events (topic `notifications.events`): the after-sales contract
(docs/after-sales.md). Stream `notification-{notification_id}`, and `sla-{subject}` for SLA clocks.
The notifications service adds its internal events beside these."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime

from libs.domain.events import DomainEvent
from libs.domain.types import Code, Id

TOPIC = "notifications.events"
NOTIFICATION_CATEGORY = "notification"
SLA_CATEGORY = "sla"

Channel = Literal["email", "sms", "in_app"]


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


__all__ = ["NOTIFICATION_CATEGORY", "SLA_CATEGORY", "TOPIC", "Channel", "NotificationEvent", "SlaBreachWarning"]
