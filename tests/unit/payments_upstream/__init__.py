"""Unit tests of upstream payment events (Stripe format), signatures and disputes; shared builders live here.

The story: student stu-00042 buys "AI Product Management in Practice" (TWD 2,980.00) as order
KOL-20250512-00001 on 2025-05-12; Stripe payment intent pi_3Test..., charge ch_3Test....
Builders return Stripe-shaped dicts (lower-case currency, integer minor units, unix times).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from libs.domain.events import DomainEvent, registry
from libs.domain.money import Money

ORDER = "KOL-20250512-00001"
STUDENT = "stu-00042"
COURSE = "course-ai-pm"
PI = "pi_3TestAbCdEfGhIj0123456789"
CHARGE = "ch_3TestAbCdEfGhIj9876543210"
REFUND = "re_3TestAbCdEfGhIjRfnd000001"
DISPUTE = "dp_1TestDisputeAbCdEf012345"
PRICE = 298000  # TWD 2,980.00 in minor units
CREATED = 1747030000  # 2025-05-12 06:06:40 UTC
DUE_BY = 1748044799  # 2025-05-23 23:59:59 UTC
METADATA = {"order_id": ORDER, "student_id": STUDENT, "course_id": COURSE}
SECRET = "whsec_test_5d1c0f3b9a8e7d6c5b4a3f2e1d0c9b8a"
OLD_SECRET = "whsec_test_old_0123456789abcdef0123456789ab"


def twd(amount: int) -> Money:
    return Money(amount=amount, currency="TWD")


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def event(type_: str, obj: dict[str, Any], *, event_id: str = "evt_1TestEventAbCdEf01234567", created: int = CREATED,
          previous: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A Stripe Event envelope around `obj`."""
    data: dict[str, Any] = {"object": copy.deepcopy(obj)}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": event_id, "object": "event", "api_version": "2024-06-20", "created": created, "data": data,
            "livemode": False, "pending_webhooks": 1,
            "request": {"id": "req_TestRequest01", "idempotency_key": "6f1c0d8e-3b2a-4c5d-9e8f-7a6b5c4d3e2f"},
            "type": type_, **extra}


def payment_intent(*, status: str = "succeeded", amount: int = PRICE, currency: str = "twd",
                   metadata: dict[str, str] | None = None, latest_charge: str | None = CHARGE,
                   error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": PI, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
            "amount_received": amount if status == "succeeded" else 0, "capture_method": "automatic",
            "created": CREATED - 60, "currency": currency, "customer": "cus_TestCustomer01",
            "last_payment_error": error, "latest_charge": latest_charge, "livemode": False,
            "metadata": METADATA if metadata is None else metadata, "payment_method_types": ["card"],
            "status": status}


def charge(*, amount: int = PRICE, amount_refunded: int = 0, currency: str = "twd",
           metadata: dict[str, str] | None = None, refunds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": CHARGE, "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": amount_refunded, "balance_transaction": "txn_TestBalance01", "captured": True,
        "created": CREATED - 30, "currency": currency, "customer": "cus_TestCustomer01", "disputed": False,
        "livemode": False, "metadata": METADATA if metadata is None else metadata, "paid": True,
        "payment_intent": PI, "payment_method": "pm_TestCard01", "refunded": amount_refunded >= amount,
        "status": "succeeded",
        "payment_method_details": {"type": "card", "card": {"brand": "visa", "last4": "4242"}},
    }
    if refunds is not None:
        obj["refunds"] = {"object": "list", "data": refunds, "has_more": False, "total_count": len(refunds),
                          "url": f"/v1/charges/{CHARGE}/refunds"}
    return obj


def refund(*, refund_id: str = REFUND, amount: int = 100000, status: str = "succeeded", currency: str = "twd",
           created: int = CREATED + 3600, charge_id: Any = CHARGE) -> dict[str, Any]:
    return {"id": refund_id, "object": "refund", "amount": amount, "balance_transaction": "txn_TestRefund01",
            "charge": charge_id, "created": created, "currency": currency, "metadata": {}, "payment_intent": PI,
            "reason": "requested_by_customer", "receipt_number": None, "status": status}


def dispute(*, status: str = "needs_response", amount: int = PRICE, currency: str = "twd", due_by: int | None = DUE_BY,
            submissions: int = 0, reason: str = "product_not_received", dispute_id: str = DISPUTE) -> dict[str, Any]:
    return {"id": dispute_id, "object": "dispute", "amount": amount, "balance_transactions": [], "charge": CHARGE,
            "created": CREATED + 86400, "currency": currency, "evidence": {"customer_communication": None},
            "evidence_details": {"due_by": due_by, "has_evidence": submissions > 0, "past_due": False,
                                 "submission_count": submissions},
            "is_charge_refundable": False, "livemode": False, "metadata": {}, "payment_intent": PI,
            "reason": reason, "status": status}


def round_trip(events: Sequence[DomainEvent]) -> list[DomainEvent]:
    """Events as the store would give them back: JSON data decoded through the registry."""
    return [registry.decode(e.event_type, e.schema_version, e.to_data()) for e in events]
