"""The variables each template gets (its view model), built from the event that causes the message,
what the service knows of the RMA (application/subjects.py) and its ETA. Dates are written in the
configured time zone, in the message's locale."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from libs.domain.events import DomainEvent
from services.notifications.application.subjects import Subject
from services.notifications.domain.events import SlaBreachWarning
from services.rma.domain import events as rma
from services.shipping.domain import events as ship

_WEEKDAYS_ZH = "一二三四五六日"


@dataclass(frozen=True)
class Formatter:
    timezone: ZoneInfo
    tracking_base_url: str = ""

    def when(self, at: datetime | None, locale: str) -> str:
        if at is None:
            return ""
        local = at.astimezone(self.timezone)
        if locale == "zh-TW":
            weekday = _WEEKDAYS_ZH[local.weekday()]
            return f"{local.year}年{local.month}月{local.day}日 週{weekday} {local:%H:%M}"
        return f"{local:%a} {local.day} {local:%b %Y, %H:%M}"

    def duration(self, span: timedelta, locale: str) -> str:
        minutes = max(0, int(span.total_seconds() // 60))
        days, rest = divmod(minutes, 1440)
        hours, minutes = divmod(rest, 60)
        if locale == "zh-TW":
            parts = [f"{days} 天" if days else "", f"{hours} 小時" if hours else "",
                     f"{minutes} 分鐘" if minutes else ""]
            return " ".join(p for p in parts if p) or "不到 1 分鐘"
        parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
        return " ".join(p for p in parts if p) or "under a minute"

    def tracking_url(self, tracking_number: str | None) -> str:
        return f"{self.tracking_base_url.rstrip('/')}/track/{tracking_number}" if tracking_number else ""


@dataclass(frozen=True)
class MessageInput:
    event: DomainEvent
    subject: Subject | None
    subject_id: str
    eta: datetime | None
    locale: str
    now: datetime


Builder = Callable[[MessageInput, Formatter], dict[str, Any]]


def _base(m: MessageInput, f: Formatter) -> dict[str, Any]:
    s = m.subject
    return {"rma_id": m.subject_id, "customer_name": (s.customer_name if s else None) or "",
            "eta": f.when(m.eta, m.locale)}


def _tracking(m: MessageInput, f: Formatter, number: str | None) -> dict[str, Any]:
    number = number or (m.subject.tracking_number if m.subject else None) or ""
    return {"tracking_number": number, "tracking_url": f.tracking_url(number),
            "carrier": (m.subject.carrier if m.subject else None) or ""}


def rma_opened(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, rma.RmaOpened)
    return {**_base(m, f), "serial": e.serial, "sku": e.sku, "fault_code": e.fault_code}


def return_label_issued(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, ship.ReturnLabelIssued)
    return {**_base(m, f), "label_id": e.label_id, "carrier": e.carrier, "tracking_number": e.tracking_number,
            "barcode_payload": e.barcode_payload, "qr_payload": e.qr_payload,
            "tracking_url": f.tracking_url(e.tracking_number)}


def rma_shipped_in(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, rma.RmaShippedIn)
    return {**_base(m, f), "received_at": f.when(e.at, m.locale)}


def rma_shipped_out(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, rma.RmaShippedOut)
    return {**_base(m, f), "carrier": e.carrier, "tracking_number": e.tracking_number,
            "tracking_url": f.tracking_url(e.tracking_number)}


def shipment_out_for_delivery(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, ship.ShipmentStatusChanged)
    return {**_base(m, f), **_tracking(m, f, e.tracking_number), "location": e.location}


def shipment_delivered(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, ship.ShipmentStatusChanged)
    return {**_base(m, f), "tracking_number": e.tracking_number, "delivered_at": f.when(e.occurred_at, m.locale),
            "location": e.location}


def shipment_exception(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, ship.ShipmentStatusChanged)
    return {**_base(m, f), **_tracking(m, f, e.tracking_number), "status": e.status.value,
            "carrier_status": e.carrier_status, "location": e.location}


def rma_closed(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, rma.RmaClosed)
    return {**_base(m, f), "resolution": e.resolution}


def rma_rejected(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, rma.RmaRejected)
    return {**_base(m, f), "reason": e.reason}


def rma_cancelled(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, rma.RmaCancelled)
    return {**_base(m, f), "reason": e.reason}


def sla_breach_warning(m: MessageInput, f: Formatter) -> dict[str, Any]:
    e = m.event
    assert isinstance(e, SlaBreachWarning)
    return {"subject_type": e.subject_type, "subject_id": e.subject_id, "stage": e.stage,
            "started_at": f.when(e.started_at, m.locale), "due_at": f.when(e.due_at, m.locale),
            "late_by": f.duration(max(m.now - e.due_at, timedelta()), m.locale), "eta": f.when(m.eta, m.locale)}


BUILDERS: dict[str, Builder] = {
    "rma_opened": rma_opened,
    "return_label_issued": return_label_issued,
    "rma_shipped_in": rma_shipped_in,
    "rma_shipped_out": rma_shipped_out,
    "shipment_out_for_delivery": shipment_out_for_delivery,
    "shipment_delivered": shipment_delivered,
    "shipment_exception": shipment_exception,
    "rma_closed": rma_closed,
    "rma_rejected": rma_rejected,
    "rma_cancelled": rma_cancelled,
    "sla_breach_warning": sla_breach_warning,
}


def build_context(template: str, m: MessageInput, f: Formatter) -> dict[str, Any]:
    return BUILDERS[template](m, f)
