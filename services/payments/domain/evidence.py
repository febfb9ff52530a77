"""The inputs of a dispute's evidence packet (`dispute.evidence_packet`), built from recorded events.

Pure functions over the events of the order's streams as the event store holds them: the
orders service's `order-<id>` and `bill-<id>` streams (the source of truth of the order, its
bills, who delivered the service and when), this service's `transaction-<id>` stream (the
payment log and the cancellation policy version in force at placement) and the dispute's own
stream. Each section says where every entry came from (stream, version, event type, actor), and
`not_available` lists the evidence Stripe asks for that the platform does not record, so that
nobody reads an empty section as "there was none" or fills it with something invented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.orders.domain import events as oe
from services.payments.domain.policy import HOUR, CancellationPolicy

__all__ = [
    "StoredEvent",
    "activity_log",
    "bill_views",
    "customer_communication",
    "not_available",
    "order_view",
    "refund_policy_section",
    "service_documentation",
]


@dataclass(frozen=True)
class StoredEvent:
    """One recorded event: where it is stored, who recorded it, and the decoded event (None when this
    service cannot decode its type; it still appears in the activity log with its raw data)."""

    stream_id: str
    stream_version: int
    global_position: int
    event_type: str
    recorded_at: datetime
    metadata: Mapping[str, Any]
    data: Mapping[str, Any]
    event: DomainEvent | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.stream_id} v{self.stream_version} {self.event_type}"

    @property
    def actor(self) -> dict[str, Any]:
        return {"actor": self.metadata.get("actor"), "role": self.metadata.get("role")}


def _money(value: Money | None) -> dict[str, Any] | None:
    return {"amount": value.amount, "currency": value.currency} if value is not None else None


# --- the order and its bills ------------------------------------------------------------------------


def order_view(events: Sequence[StoredEvent]) -> dict[str, Any]:
    """The order as its `order-<id>` stream tells it; empty when there is no such stream (e.g. a
    Kolable course order, which lives in this service's reconciliation instead)."""
    view: dict[str, Any] = {}
    for s in events:
        e = s.event
        match e:
            case oe.OrderPlaced():
                view.update(
                    order_id=e.order_id, customer_id=e.customer_id, staff_id=e.staff_id,
                    service={"service_code": e.service.service_code, "name": e.service.name,
                             "product_line": e.service.product_line, "hourly_rate": _money(e.service.hourly_rate)},
                    slot={"start": e.slot.start, "end": e.slot.end},
                    address=e.address.model_dump(mode="json"), estimated_total=_money(e.estimated_total),
                    intended_tenders=e.tenders.model_dump(mode="json"),
                    prepayment={"required": e.prepayment.required, "policy_version": e.prepayment.policy_version,
                                "reasons": [r.model_dump(mode="json") for r in e.prepayment.reasons],
                                "payment_deadline": e.payment_deadline},
                    prepayment_bill_id=e.prepayment_bill_id, placed_at=e.placed_at,
                    product_description=(f"{e.service.name} ({e.service.service_code}) at {e.address.district}, "
                                         f"{e.address.city}, {e.slot.start.isoformat()} to {e.slot.end.isoformat()}"),
                    status=(oe.OrderStatus.AWAITING_PREPAYMENT if e.prepayment.required
                            else oe.OrderStatus.AWAITING_CONFIRMATION).value)
            case oe.OrderCheckoutStarted():
                view["status"] = oe.OrderStatus.PROCESSING.value
            case oe.OrderCheckoutAbandoned():
                view["status"] = oe.OrderStatus.AWAITING_PREPAYMENT.value
            case oe.OrderPrepaid():
                view.update(prepaid_amount=_money(e.amount), prepayment_reference=e.payment_reference,
                            prepaid_at=e.at, status=oe.OrderStatus.AWAITING_CONFIRMATION.value)
            case oe.OrderAccepted():
                view.update(merchant_id=e.merchant_id, accepted_at=e.at, status=oe.OrderStatus.ACCEPTED.value)
            case oe.OrderServiceStarted():
                view.update(service_started_at=e.at, status=oe.OrderStatus.IN_SERVICE.value)
            case oe.OrderBilled():
                view.update(bill_id=e.bill_id, bill_total=_money(e.total), bill_revision=1,
                            status=oe.OrderStatus.BILLED.value)
            case oe.OrderBillAdjusted():
                view.update(bill_total=_money(e.total), bill_revision=e.revision)
            case oe.OrderBillConfirmed():
                view.update(confirmed_revision=e.revision, bill_total=_money(e.total),
                            status=oe.OrderStatus.AWAITING_PAYMENT.value)
            case oe.OrderCompleted():
                view.update(settled_total=_money(e.settled_total), completed_at=e.at,
                            status=oe.OrderStatus.COMPLETED.value)
            case oe.OrderCancelled():
                view.update(status=oe.OrderStatus.CANCELLED.value, cancellation={
                    "cancelled_by": e.cancelled_by.value, "fault_party": e.fault_party.value,
                    "reason_code": e.reason_code, "reason": e.reason, "cancelled_at": e.cancelled_at,
                    "seconds_before_service_start": e.seconds_before_service_start, "was_prepaid": e.was_prepaid,
                    "status_before": e.status_before.value})
            case oe.OrderPaymentReceivedAfterCancellation():
                view.setdefault("payments_after_cancellation", []).append(
                    {"amount": _money(e.amount), "reference": e.payment_reference, "at": e.at})
            case _:
                pass
    if "status" in view:
        view["status_label"] = oe.OrderStatus(view["status"]).label_zh
        view["customer_name"] = None  # not recorded: see not_available
        view["customer_email"] = None
    return view


def bill_views(streams: Mapping[str, Sequence[StoredEvent]]) -> dict[str, dict[str, Any]]:
    """Each bill as its `bill-<id>` stream tells it, with every revision the customer was shown."""
    out: dict[str, dict[str, Any]] = {}
    for events in streams.values():
        view: dict[str, Any] = {}
        for s in events:
            e = s.event
            match e:
                case oe.BillIssued():
                    view.update(bill_id=e.bill_id, order_id=e.order_id, kind=oe.BillKind.PREPAYMENT.value,
                                amount=_money(e.amount), issued_at=e.at, status=oe.BillStatus.PENDING.value)
                case oe.BillPushed() | oe.BillAdjusted():
                    if isinstance(e, oe.BillPushed):
                        view.update(bill_id=e.bill_id, order_id=e.order_id, kind=oe.BillKind.FINAL.value,
                                    issued_at=e.at, status=oe.BillStatus.PENDING.value)
                    revision = {"revision": e.revision, "labour": e.labour.model_dump(mode="json"),
                                "materials": [m.model_dump(mode="json") for m in e.materials],
                                "total": _money(e.total), "at": e.at, **s.actor,
                                "reason": e.reason if isinstance(e, oe.BillAdjusted) else None}
                    view.setdefault("revisions", []).append(revision)
                    view.update(revision=e.revision, amount=_money(e.total), labour=revision["labour"],
                                materials=revision["materials"])
                case oe.BillConfirmed():
                    view.update(confirmed_revision=e.revision, confirmed_total=_money(e.total), confirmed_at=e.at,
                                confirmed_by=s.actor)
                case oe.BillPaymentStarted():
                    view["status"] = oe.BillStatus.PROCESSING.value
                case oe.BillPaymentAbandoned():
                    view["status"] = oe.BillStatus.PENDING.value
                case oe.BillPaid():
                    view.update(status=oe.BillStatus.COMPLETED.value, paid_amount=_money(e.amount),
                                payment_reference=e.reference, paid_at=e.at)
                case oe.BillClosed():
                    view.update(status=oe.BillStatus.CLOSED.value, close_reason=e.reason, closed_at=e.at)
                case _:
                    pass
        if "bill_id" in view:
            view["status_label"] = oe.BillStatus(view["status"]).label_zh
            out[view["bill_id"]] = view
    return out


def primary_bill(bills: Mapping[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The bill a dispute is about: the final bill when there is one, else the prepayment bill; the
    other bill rides along under `prepayment_bill`."""
    final = next((b for b in bills.values() if b.get("kind") == oe.BillKind.FINAL.value), None)
    prepayment = next((b for b in bills.values() if b.get("kind") == oe.BillKind.PREPAYMENT.value), None)
    if final is None:
        return dict(prepayment) if prepayment is not None else None
    return {**final, "prepayment_bill": prepayment}


# --- service documentation and customer communication -----------------------------------------------


def _entry(s: StoredEvent, kind: str, at: datetime, detail: str, **more: Any) -> dict[str, Any]:
    return {"kind": kind, "at": at, "detail": detail, **s.actor, "source": s.source, **more}


def _minutes(labour: oe.LabourLine) -> str:
    hours, minutes = divmod(labour.minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def service_documentation(order_events: Sequence[StoredEvent],
                          bill_streams: Mapping[str, Sequence[StoredEvent]]) -> list[dict[str, Any]]:
    """What the orders service recorded about the delivery of the service: the merchant who accepted
    it, the start of the service on site (after which nobody can cancel), the merchant's bill of
    the work actually done (minutes and materials), the customer's confirmation of that bill, and
    the completion. Each entry names who recorded it (actor, role) and the stored event."""
    out: list[dict[str, Any]] = []
    for s in order_events:
        e = s.event
        match e:
            case oe.OrderAccepted():
                out.append(_entry(s, "merchant_accepted", e.at, f"merchant {e.merchant_id} accepted the order",
                                  merchant_id=e.merchant_id))
            case oe.OrderServiceStarted():
                out.append(_entry(s, "service_started", e.at,
                                  f"merchant {e.merchant_id} started the service on site (cancellation locked)",
                                  merchant_id=e.merchant_id))
            case oe.OrderCompleted():
                out.append(_entry(s, "service_completed", e.at,
                                  f"bill {e.bill_id} settled at {e.settled_total}: the order is completed"))
            case _:
                pass
    for events in bill_streams.values():
        for s in events:
            e = s.event
            match e:
                case oe.BillPushed() | oe.BillAdjusted():
                    what = "pushed" if isinstance(e, oe.BillPushed) else "adjusted"
                    materials = ", ".join(f"{m.quantity} x {m.description}" for m in e.materials) or "no materials"
                    out.append(_entry(
                        s, f"bill_{what}", e.at,
                        f"merchant {what} bill {e.bill_id} revision {e.revision}: {_minutes(e.labour)} of service, "
                        f"{materials}; total {e.total}", bill_id=e.bill_id, revision=e.revision,
                        minutes=e.labour.minutes, total=_money(e.total)))
                case oe.BillConfirmed():
                    out.append(_entry(s, "bill_confirmed_by_customer", e.at,
                                      f"the customer confirmed revision {e.revision} of bill {e.bill_id} "
                                      f"({e.total}) after the service", bill_id=e.bill_id, revision=e.revision))
                case _:
                    pass
    return out


def customer_communication(order_events: Sequence[StoredEvent],
                           bill_streams: Mapping[str, Sequence[StoredEvent]]) -> list[dict[str, Any]]:
    """What passed between the platform and the customer, as far as it is recorded: the customer's own
    order (what they asked for, where, when), the prepayment request with its reasons and deadline,
    each bill revision shown to them (an adjustment carries the merchant's reason), their confirmation,
    and a cancellation with its reason. All in the app (`channel`); there are no free-text messages:
    the platform keeps no chat, e-mail, SMS or LINE thread (see not_available)."""
    out: list[dict[str, Any]] = []
    for s in order_events:
        e = s.event
        match e:
            case oe.OrderPlaced():
                out.append(_entry(s, "order_placed", e.placed_at,
                                  f"the customer ordered {e.service.name} for {e.slot.start.isoformat()} to "
                                  f"{e.slot.end.isoformat()} at {e.address.line1}, {e.address.district}, "
                                  f"{e.address.city}; estimate {e.estimated_total}", channel="app", direction="in"))
                if e.prepayment.required:
                    reasons = "; ".join(r.detail for r in e.prepayment.reasons)
                    deadline = e.payment_deadline.isoformat() if e.payment_deadline else "none"
                    out.append(_entry(s, "prepayment_requested", e.placed_at,
                                      f"prepayment of {e.estimated_total} requested by {deadline} "
                                      f"(policy {e.prepayment.policy_version}: {reasons})",
                                      channel="app", direction="out"))
            case oe.OrderCancelled():
                out.append(_entry(s, "cancellation", e.cancelled_at,
                                  f"cancelled by {e.cancelled_by.value} ({e.reason_code}"
                                  f"{': ' + e.reason if e.reason else ''}), {e.seconds_before_service_start} s "
                                  f"before the service start; fault: {e.fault_party.value}",
                                  channel="app", direction="in" if e.cancelled_by is oe.CancelledBy.CUSTOMER
                                  else "out"))
            case _:
                pass
    for events in bill_streams.values():
        for s in events:
            e = s.event
            match e:
                case oe.BillPushed():
                    out.append(_entry(s, "bill_presented", e.at,
                                      f"bill {e.bill_id} revision {e.revision} ({e.total}) sent to the customer "
                                      "for confirmation", channel="app", direction="out"))
                case oe.BillAdjusted():
                    out.append(_entry(s, "bill_adjusted", e.at,
                                      f"bill {e.bill_id} revision {e.revision} ({e.total}) sent to the customer; "
                                      f"reason: {e.reason}", channel="app", direction="out"))
                case oe.BillConfirmed():
                    out.append(_entry(s, "bill_confirmed", e.at,
                                      f"the customer confirmed revision {e.revision} ({e.total})",
                                      channel="app", direction="in"))
                case _:
                    pass
    return out


# --- the refund policy --------------------------------------------------------------------------------


def _hours(h: int) -> str:
    return f"{h} h"


def refund_policy_section(policy: CancellationPolicy | None, placed_at: datetime | None) -> dict[str, Any]:
    """The cancellation/refund policy version in force when the order was placed (the one its
    transaction was opened under), with a plain-language text for the evidence form. Empty when the
    order has no transaction here."""
    if policy is None:
        return {}
    windows = []
    lower = 0
    for w in policy.penalty_windows:
        pct = w.rate_numerator * 100 // w.rate_denominator
        windows.append(f"{_hours(lower) + ' to ' if lower else 'less than '}{_hours(w.below_hours)}"
                       f"{' (exclusive)' if lower else ''} before the start: {pct}% of the amount paid online is kept")
        lower = w.below_hours
    windows.append(f"{_hours(lower)} or more before the start: full refund")
    text = (f"Cancellation policy {policy.version} (in force from {policy.effective_from.isoformat()}). "
            "A cancellation by the customer: " + "; ".join(windows) + ". A cancellation by the merchant or the "
            "platform: full refund. Refunds go back along the original payment path (card first, then member "
            "balance, then vouchers) and never exceed the amount paid online. The service cannot be cancelled "
            "once the merchant has started it on site.")
    return {
        "version": policy.version,
        "effective_from": policy.effective_from,
        "applies_because": (f"the version in force when the order was placed ({placed_at.isoformat()})"
                            if placed_at else "the version the order's transaction was opened under"),
        "currency": policy.currency,
        "penalty_windows": [{"below_hours": w.below_hours, "rate": str(w.rate),
                             "below_seconds": w.below_hours * HOUR} for w in policy.penalty_windows],
        "merchant_compensation": [w.model_dump() for w in policy.merchant_compensation],
        "voucher_grace_days": policy.voucher_grace_days,
        "voucher_extension_days": policy.voucher_extension_days,
        "expired_voucher_action": policy.expired_voucher_action.value,
        "text": text,
        "disclosure": None,  # not recorded: see not_available
    }


# --- the activity log -----------------------------------------------------------------------------------


def activity_log(events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """Every event of the order's streams with who recorded it, in which role and when."""
    return [{"recorded_at": s.recorded_at, "global_position": s.global_position, "stream_id": s.stream_id,
             "stream_version": s.stream_version, "event_type": s.event_type, "actor": s.metadata.get("actor"),
             "role": s.metadata.get("role"), "correlation_id": s.metadata.get("correlation_id"),
             "causation_id": s.metadata.get("causation_id"), "reason": s.metadata.get("reason"),
             "data": dict(s.data)} for s in events]


def not_available(order: Mapping[str, Any], bill: Mapping[str, Any] | None,
                  policy: Mapping[str, Any]) -> list[dict[str, str]]:
    """The evidence Stripe's form asks for that the platform does not hold, and why (said, not invented)."""
    out = [
        {"evidence": "customer_name, customer_email_address",
         "why": "the platform records customers by id only; no name or e-mail address is stored"},
        {"evidence": "direct customer messages (chat, e-mail, SMS, LINE)",
         "why": "no messaging channel is recorded yet (notifications arrive with issue 4); customer_communication "
                "lists the in-app interactions recorded as events"},
        {"evidence": "proof of presence (photos, GPS, signature, customer IP or device)",
         "why": "the merchant app records the start of the service and the bill, not photos or locations"},
        {"evidence": "refund_policy_disclosure",
         "why": "no record is kept of the policy being shown to this customer; the version applies because it "
                "was in force at placement"},
    ]
    if not order:
        out.append({"evidence": "order, service_documentation",
                    "why": "no order-<id> stream in the event store for this dispute's order (not an order of the "
                           "orders service, or the order is not known yet)"})
    if order and bill is None:
        out.append({"evidence": "bill", "why": "the order has no bill yet"})
    if not policy:
        out.append({"evidence": "refund_policy",
                    "why": "no transaction of this order in the payments service, so no policy version is recorded"})
    return out
