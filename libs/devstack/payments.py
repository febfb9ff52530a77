"""python -m libs.devstack.payments — publish payments events by hand while the payments
service (a later issue) does not exist yet. Reads the running stack's endpoints from
KAFKA_BOOTSTRAP_SERVERS and PROJECTOR (the projector URL), or .closeloop/dev.json.

    python -m libs.devstack.payments capture ORDER_ID     # prepayment captured (card)
    python -m libs.devstack.payments attempt ORDER_ID     # customer opened the cashier
    python -m libs.devstack.payments abandon ORDER_ID ATTEMPT_ID
    python -m libs.devstack.payments settle ORDER_ID      # final bill settled (多退少補)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import typer

from libs.devstack.client import PaymentsFeed
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.payments.domain import events as pay

app = typer.Typer(add_completion=False, help=__doc__)
DEV_JSON = Path(__file__).resolve().parents[2] / ".closeloop" / "dev.json"


def _endpoints() -> tuple[str, str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("PROJECTOR"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["PROJECTOR"]
    if not DEV_JSON.exists():
        raise typer.BadParameter("no running stack: start `make run`, or set KAFKA_BOOTSTRAP_SERVERS and PROJECTOR")
    dev = json.loads(DEV_JSON.read_text())
    return dev["kafka_bootstrap_servers"], dev["services"]["projector"]


def _order(projector: str, order_id: str) -> dict[str, Any]:
    r = httpx.get(f"{projector}/orders/{order_id}", timeout=10)
    if r.status_code != 200:
        raise typer.BadParameter(f"order {order_id}: {r.status_code} {r.text}")
    return r.json()


def _bill(order: dict[str, Any], kind: str) -> dict[str, Any]:
    for bill in order["bills"]:
        if bill["kind"] == kind:
            return bill
    raise typer.BadParameter(f"order {order['order_id']} has no {kind} bill yet")


def _publish(bootstrap: str, event: DomainEvent) -> None:
    async def go() -> None:
        feed = PaymentsFeed(bootstrap)
        await feed.start()
        try:
            await feed.publish(event, actor="payments-cli")
        finally:
            await feed.stop()

    asyncio.run(go())
    typer.echo(f"published {event.event_type} for order {event.order_id}")  # type: ignore[attr-defined]


@app.command()
def attempt(order_id: str) -> None:
    """The customer opened the cashier for the prepayment bill."""
    bootstrap, projector = _endpoints()
    bill = _bill(_order(projector, order_id), "prepayment")
    attempt_id = f"att-{secrets.token_hex(4)}"
    _publish(bootstrap, pay.PaymentAttemptStarted(order_id=order_id, bill_id=bill["bill_id"], attempt_id=attempt_id,
                                                  amount=Money(**bill["amount"]), method="credit_card",
                                                  at=datetime.now(UTC)))
    typer.echo(f"attempt id: {attempt_id}")


@app.command()
def abandon(order_id: str, attempt_id: str) -> None:
    """The customer came back from the cashier without paying."""
    bootstrap, projector = _endpoints()
    bill = _bill(_order(projector, order_id), "prepayment")
    _publish(bootstrap, pay.PaymentAttemptFailed(order_id=order_id, bill_id=bill["bill_id"], attempt_id=attempt_id,
                                                 reason=pay.FailureReason.ABANDONED, at=datetime.now(UTC)))


@app.command()
def capture(order_id: str) -> None:
    """The prepayment was captured in full by card."""
    bootstrap, projector = _endpoints()
    bill = _bill(_order(projector, order_id), "prepayment")
    amount = Money(**bill["amount"])
    _publish(bootstrap, pay.PrepaymentCaptured(
        order_id=order_id, bill_id=bill["bill_id"], amount=amount, captured_at=datetime.now(UTC),
        tenders=[pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=amount, reference=f"pi_{secrets.token_hex(6)}")]))


@app.command()
def settle(order_id: str) -> None:
    """The confirmed final bill was settled: refund the excess or collect the shortfall."""
    bootstrap, projector = _endpoints()
    order = _order(projector, order_id)
    bill = _bill(order, "final")
    total = Money(**bill["amount"])
    prepaid = Money(**order["prepaid_amount"]) if order["prepaid_amount"] else Money.zero(total.currency)
    refunded = Money(amount=max(prepaid.amount - total.amount, 0), currency=total.currency)
    collected = Money(amount=max(total.amount - prepaid.amount, 0), currency=total.currency)
    tenders = [pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=total, reference=f"pi_{secrets.token_hex(6)}")]
    _publish(bootstrap, pay.BillSettled(order_id=order_id, bill_id=bill["bill_id"], total=total, tenders=tenders,
                                        refunded=refunded, collected=collected, settled_at=datetime.now(UTC)))


if __name__ == "__main__":
    app()
