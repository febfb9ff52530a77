"""Stripe-format events for the demo, the README and the tests, signed like Stripe signs
webhook deliveries (services/payments/domain/signature.py)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import httpx

from services.payments.domain.signature import HEADER, sign


def stripe_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _event(type_: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    return {"id": stripe_id("evt"), "object": "event", "api_version": "2024-06-20", "created": created,
            "livemode": False, "pending_webhooks": 1, "request": {"id": stripe_id("req"), "idempotency_key": None},
            "type": type_, "data": {"object": obj}}


def charge_succeeded(order_id: str, amount: int, currency: str = "twd", *, metadata: dict[str, str] | None = None,
                     charge_id: str | None = None, payment_intent_id: str | None = None,
                     created: int | None = None) -> dict[str, Any]:
    """A `charge.succeeded` event for a card payment of `amount` minor units for our order
    (`metadata` adds keys beside `order_id`, e.g. Kolable's `student_id` and `course_id`)."""
    now = created if created is not None else int(time.time())
    return _event("charge.succeeded", {
        "id": charge_id or stripe_id("ch"), "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": 0, "currency": currency.lower(), "paid": True, "refunded": False,
        "status": "succeeded", "payment_intent": payment_intent_id or stripe_id("pi"), "created": now,
        "metadata": {"order_id": order_id, **(metadata or {})}}, now)


def dispute_created(charge: dict[str, Any], reason: str = "product_not_received",
                    evidence_due_in_days: int = 7, created: int | None = None) -> dict[str, Any]:
    """A `charge.dispute.created` event on the charge of a `charge_succeeded` event (needs_response)."""
    obj = charge["data"]["object"]
    now = created if created is not None else int(time.time())
    return _event("charge.dispute.created", {
        "id": stripe_id("dp"), "object": "dispute", "amount": obj["amount"], "currency": obj["currency"],
        "charge": obj["id"], "payment_intent": obj["payment_intent"], "created": now, "reason": reason,
        "status": "needs_response", "is_charge_refundable": False, "metadata": {},
        "evidence_details": {"due_by": now + evidence_due_in_days * 86400, "has_evidence": False, "past_due": False,
                             "submission_count": 0}}, now)


async def send_webhook(http: httpx.AsyncClient, url: str, secret: str, event: dict[str, Any]) -> dict[str, Any]:
    """POST the event to the webhook with a valid Stripe-Signature; returns the response body."""
    body = json.dumps(event).encode()
    r = await http.post(url, content=body, headers={HEADER: sign(body, secret, int(time.time())),
                                                   "Content-Type": "application/json"})
    r.raise_for_status()
    return r.json()
