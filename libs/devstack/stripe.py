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


def charge_succeeded(order_id: str, amount: int, currency: str = "twd") -> dict[str, Any]:
    """A `charge.succeeded` event for a card payment of `amount` minor units for our order."""
    now = int(time.time())
    return {
        "id": stripe_id("evt"), "object": "event", "api_version": "2024-06-20", "created": now,
        "livemode": False, "pending_webhooks": 1, "request": {"id": stripe_id("req"), "idempotency_key": None},
        "type": "charge.succeeded",
        "data": {"object": {
            "id": stripe_id("ch"), "object": "charge", "amount": amount, "amount_captured": amount,
            "amount_refunded": 0, "currency": currency.lower(), "paid": True, "refunded": False,
            "status": "succeeded", "payment_intent": stripe_id("pi"), "created": now,
            "metadata": {"order_id": order_id}}},
    }


async def send_webhook(http: httpx.AsyncClient, url: str, secret: str, event: dict[str, Any]) -> dict[str, Any]:
    """POST the event to the webhook with a valid Stripe-Signature; returns the response body."""
    body = json.dumps(event).encode()
    r = await http.post(url, content=body, headers={HEADER: sign(body, secret, int(time.time())),
                                                   "Content-Type": "application/json"})
    r.raise_for_status()
    return r.json()
