"""A prepayment paid partly with a voucher and the member balance and the rest by card, through the running
stack and the signed Stripe webhook: "use my TWD 200 voucher and TWD 300 of balance, pay the remaining
TWD 700 by card". The voucher is bound and the balance held (a reservation) until the provider's charge of
the remainder captures every tender at once; an abandoned attempt keeps the reservation; cancelling it,
the order's cancellation or its payment deadline releases the voucher and the balance; a charge of another
amount is recorded to be returned; bad input is refused naming the field, with nothing stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from libs.devstack.client import PlatformClient
from libs.devstack.stripe import charge_succeeded
from services.orders.adapters.config import DEFAULT_POLICY
from tests.e2e.conftest import start_child
from tests.e2e.test_order_flow import order_body
from tests.e2e.test_payments_commands import (
    PREPAYMENT,
    Payments,
    bill_and_confirm,
    event_data,
    place,
    twd,
    uid,
    versions,
    who,
)
from tests.e2e.test_payments_flow import send

pytestmark = pytest.mark.e2e

VOUCHER, BALANCE, REMAINDER = 20000, 30000, 70000  # TWD 200 + TWD 300 + TWD 700 = the TWD 1,200 prepayment


@pytest.fixture
def pay(client: PlatformClient, stack: Any) -> Payments:
    return Payments(client, stack)


def kinds(tenders: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(t["kind"], t["amount"]["amount"]) for t in tenders]


async def member_with_voucher(pay: Payments) -> tuple[str, str]:
    """A member with TWD 300 of balance (below the first bonus tier) and a TWD 200 voucher."""
    customer, voucher = uid("c"), uid("v")
    await pay.top_up(customer, BALANCE)
    await pay.issue(customer, voucher, VOUCHER, days=30)
    return customer, voucher


async def reserve(pay: Payments, order_id: str, customer: str) -> dict[str, Any]:
    reserved = await pay.ok(f"/payments/{order_id}/prepay",
                            {"use_vouchers": True, "use_balance": True, "allow_remainder": True},
                            who(customer, "customer", **{"Idempotency-Key": uid("k")}))
    assert reserved["captured"] is False and reserved["reserved"] is True, reserved
    assert reserved["remainder"] == twd(REMAINDER)
    return reserved


async def voucher_status(pay: Payments, voucher: str) -> dict[str, Any]:
    r = await pay.get(f"/vouchers/{voucher}")
    assert r.status_code == 200, r.text
    return r.json()


async def wallet(pay: Payments, customer: str) -> dict[str, Any]:
    return (await pay.get(f"/wallets/{customer}")).json()


async def wait_until(check: Any, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def pay_remainder_by_card(client: PlatformClient, stack: Any, pay: Payments, order_id: str,
                                customer: str) -> None:
    await pay.ok(f"/payments/{order_id}/attempts", {"amount": twd(REMAINDER), "method": "credit_card"},
                 who(customer, "customer"))
    await client.wait_for_status(order_id, "processing")  # 處理中: at the cashier
    await send(client, stack, charge_succeeded(order_id, amount=REMAINDER))
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=40)


# --- voucher + balance reserved, the card pays the rest, settlement as before ------------------------------


@pytest.mark.parametrize("minutes, settled", [(150, 150000), (90, 90000)], ids=["shortfall", "excess"])
async def test_voucher_balance_and_card_capture_the_prepayment_with_exact_tenders_and_settle_as_before(
        client: PlatformClient, stack: Any, pay: Payments, minutes: int, settled: int) -> None:
    customer, voucher = await member_with_voucher(pay)
    merchant = uid("m")
    order_id = await place(client, pay, customer)

    preview = (await pay.get(f"/payments/{order_id}/prepay-preview", use_vouchers="true", use_balance="true",
                             allow_remainder="true")).json()["plan"]
    assert kinds(preview["tenders"]) == [("voucher", VOUCHER), ("member_balance", BALANCE)]
    assert preview["remainder"] == twd(REMAINDER) and "reserved" in preview["explanation"][-1]

    reserved = await reserve(pay, order_id, customer)
    assert reserved["plan"]["tenders"] == preview["tenders"]  # the preview is what happened
    view = reserved["transaction"]
    assert view["status"] == "unpaid" and view["prepaid_tenders"] == []
    assert kinds(view["reservation"]["tenders"]) == [("voucher", VOUCHER), ("member_balance", BALANCE)]
    assert view["reservation"]["remainder"] == twd(REMAINDER) and view["reservation"]["reserved"] == twd(50000)
    assert reserved["wallet"]["total"] == twd(0) and reserved["wallet"]["held"] == twd(BALANCE)
    bound = await voucher_status(pay, voucher)
    assert bound["status"] == "bound" and bound["bound_order_id"] == order_id  # bound, not redeemed
    assert (await client.order(order_id))["status"] == "awaiting_prepayment"  # 待預付 until the card pays

    # The cashier takes exactly the remainder.
    r = await pay.post(f"/payments/{order_id}/attempts", {"amount": twd(PREPAYMENT), "method": "credit_card"},
                       who(customer, "customer"))
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "amount", r.text
    assert "remainder" in r.json()["error"]["message"]
    await pay_remainder_by_card(client, stack, pay, order_id, customer)

    view = await pay.wait(order_id, lambda t: t["status"] == "prepaid")
    assert kinds(view["prepaid_tenders"]) == [("voucher", VOUCHER), ("member_balance", BALANCE),
                                              ("third_party", REMAINDER)]
    assert view["reservation"] is None
    captured = await event_data(stack.pg_dsn, f"transaction-{order_id}", "TransactionPrepaymentCaptured")
    assert len(captured) == 1 and captured[0]["amount"] == twd(PREPAYMENT)  # one capture, every tender
    contract = await event_data(stack.pg_dsn, f"payment-{order_id}", "PrepaymentCaptured")
    assert kinds(contract[0]["tenders"]) == kinds(view["prepaid_tenders"])
    redeemed = await voucher_status(pay, voucher)
    assert redeemed["status"] == "redeemed" and redeemed["redeemed_order_id"] == order_id
    assert redeemed["redeemed_value"] == twd(VOUCHER)
    w = await wallet(pay, customer)
    assert w["total"] == twd(0) and w["held"] == twd(0)  # the hold is the order's debit now
    assert [e["amount"]["amount"] for e in await event_data(stack.pg_dsn, f"wallet-{customer}",
                                                             "WalletHoldCaptured")] == [BALANCE]
    order = await client.order(order_id)
    assert {b["kind"]: b["status"] for b in order["bills"]}["prepayment"] == "completed"

    # Settlement (多退少補) as before: voucher > balance > card applied; a shortfall is paid by card at the
    # cashier, an excess goes back along the original path, card first.
    await bill_and_confirm(client, order_id, customer, merchant, minutes=minutes)
    if settled > PREPAYMENT:
        await pay.wait(order_id, lambda t: t["status"] == "billed")
        sp = (await pay.get(f"/payments/{order_id}/settlement-preview")).json()
        assert sp["shortfall"] == twd(settled - PREPAYMENT) and sp["plan"]["refunds"] == []
        await pay.ok(f"/payments/{order_id}/attempts", {"amount": twd(settled - PREPAYMENT), "method": "credit_card"},
                     who(customer, "customer"))
        await wait_until(lambda: _final_bill_processing(client, order_id), "the final bill never got to 處理中")
        await send(client, stack, charge_succeeded(order_id, amount=settled - PREPAYMENT))
    await pay.wait(order_id, lambda t: t["status"] == "paid")
    done = await client.wait_for_status(order_id, "completed", timeout=40)
    assert done["settled_total"] == twd(settled)
    view = await pay.transaction(order_id)
    assert view["status"] == "paid"
    tenders = kinds(view["settlement"]["tenders"])
    if settled > PREPAYMENT:
        assert tenders == [("voucher", VOUCHER), ("member_balance", BALANCE), ("third_party", REMAINDER),
                           ("third_party", settled - PREPAYMENT)]
        assert view["settlement"]["refunded"] == twd(0)
    else:
        assert tenders == [("voucher", VOUCHER), ("member_balance", BALANCE), ("third_party", 40000)]
        assert view["settlement"]["refunded"] == twd(30000)
        assert [(x["kind"], x["amount"]["amount"]) for x in view["settlement"]["plan"]["refunds"]] == [
            ("third_party", 30000)]
    assert sum(a for _, a in tenders) == settled


async def _final_bill_processing(client: PlatformClient, order_id: str) -> bool:
    order = await client.order(order_id)
    return any(b["kind"] == "final" and b["status"] == "processing" for b in order["bills"])


# --- abandon, then retry --------------------------------------------------------------------------------


async def test_an_abandoned_attempt_keeps_the_reservation_and_the_card_is_retried(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer, voucher = await member_with_voucher(pay)
    order_id = await place(client, pay, customer)
    await reserve(pay, order_id, customer)
    started = await pay.ok(f"/payments/{order_id}/attempts", {"amount": twd(REMAINDER), "method": "line_pay"},
                           who(customer, "customer"))
    attempt = started["attempt_id"]
    await client.wait_for_status(order_id, "processing")

    # While the attempt is open the reservation cannot be cancelled (a charge for it may still come).
    r = await pay.post(f"/payments/{order_id}/prepay/cancel", None, who(customer, "customer"))
    assert r.status_code == 409 and r.json()["error"]["details"]["current_attempt_id"] == attempt, r.text

    # 從收銀臺點擊返回: the order is 待預付 again; the voucher stays bound, the balance held.
    done = await pay.ok(f"/payments/{order_id}/attempts/{attempt}/abandon", {"reason": "abandoned"},
                        who(customer, "customer"))
    assert done["transaction"]["reservation"]["remainder"] == twd(REMAINDER)
    await client.wait_for_status(order_id, "awaiting_prepayment")
    assert (await voucher_status(pay, voucher))["status"] == "bound"
    assert (await wallet(pay, customer))["held"] == twd(BALANCE)

    await pay_remainder_by_card(client, stack, pay, order_id, customer)  # the retry
    view = await pay.wait(order_id, lambda t: t["status"] == "prepaid")
    assert kinds(view["prepaid_tenders"]) == [("voucher", VOUCHER), ("member_balance", BALANCE),
                                              ("third_party", REMAINDER)]
    assert view["abandoned_attempts"] == [attempt]
    assert (await voucher_status(pay, voucher))["status"] == "redeemed"


# --- releases: the customer, the order's cancellation, the payment deadline ---------------------------------


async def test_cancelling_the_reservation_or_the_order_releases_the_voucher_and_the_balance(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer, voucher = await member_with_voucher(pay)
    order_id = await place(client, pay, customer)
    await reserve(pay, order_id, customer)

    cancelled = await pay.ok(f"/payments/{order_id}/prepay/cancel", {"reason": "I will use another card"},
                             who(customer, "customer"))
    assert kinds(cancelled["released"]["tenders"]) == [("voucher", VOUCHER), ("member_balance", BALANCE)]
    assert cancelled["transaction"]["reservation"] is None and cancelled["transaction"]["status"] == "unpaid"
    assert cancelled["wallet"]["total"] == twd(BALANCE) and cancelled["wallet"]["held"] == twd(0)
    back = await voucher_status(pay, voucher)
    assert back["status"] == "issued" and back["usable_now"] and back["bound_order_id"] is None
    released = await event_data(stack.pg_dsn, f"transaction-{order_id}", "TransactionReservationReleased")
    assert released[0]["reason"] == "I will use another card"
    r = await pay.post(f"/payments/{order_id}/prepay/cancel", None, who(customer, "customer"))
    assert r.status_code == 409, r.text  # nothing reserved any more

    # The voucher is usable again: reserved again, then the order is cancelled by the customer.
    await reserve(pay, order_id, customer)
    await client.command(f"/orders/{order_id}/cancel", {"cancelled_by": "customer", "reason_code": "changed_mind"},
                         actor=customer, role="customer")
    view = await pay.wait(order_id, lambda t: t["status"] == "voided")
    assert view["reservation"] is None and view["prepaid_tenders"] == []
    assert (await voucher_status(pay, voucher))["status"] == "issued"
    w = await wallet(pay, customer)
    assert w["total"] == twd(BALANCE) and w["held"] == twd(0)
    assert len(await event_data(stack.pg_dsn, f"voucher-{voucher}", "VoucherReleased")) == 2
    assert len(await event_data(stack.pg_dsn, f"wallet-{customer}", "WalletHoldReleased")) == 2


async def test_the_payment_deadline_releases_the_reservation_and_a_later_charge_is_to_be_returned(
        stack: Any, pay: Payments, tmp_path: Path) -> None:
    # An orders process whose payment window is a few seconds (and its own timer owner: only it fires
    # the deadline of the orders it placed), as in tests/e2e/test_payment_deadline.py.
    policy = tmp_path / "policy.toml"
    policy.write_text(DEFAULT_POLICY.read_text().replace(
        "payment_window_minutes = 15", "payment_window_minutes = 15\npayment_window_seconds = 8"))
    orders = start_child("orders", stack.env, stack.logs, CLOSELOOP_PREPAYMENT_POLICY_PATH=str(policy),
                         CLOSELOOP_INSTANCE_PREFIX=f"{stack.prefix}reserve{uuid.uuid4().hex[:4]}-")
    client = PlatformClient(orders.url, stack.url("projector"), auth=stack.auth)
    try:
        customer, voucher = await member_with_voucher(pay)
        placed = await client.command("/orders", order_body(customer, uid("s"), hour=19), actor=customer,
                                      role="customer")
        order_id, deadline = placed["order_id"], datetime.fromisoformat(placed["payment_deadline"])
        await pay.wait(order_id, lambda t: t["status"] == "unpaid")
        reserved = await reserve(pay, order_id, customer)
        assert datetime.fromisoformat(reserved["transaction"]["reservation"]["payment_deadline"]) == deadline

        # Nobody pays: at the deadline the orders service cancels the order; the reservation is released.
        view = await pay.wait(order_id, lambda t: t["status"] == "voided", timeout=30)
        assert view["reservation"] is None and datetime.now(deadline.tzinfo) >= deadline
        assert view["cancellation"]["refunds"] == []  # nothing was captured
        released = await event_data(stack.pg_dsn, f"transaction-{order_id}", "TransactionReservationReleased")
        assert "payment_timeout" in released[0]["reason"]
        back = await voucher_status(pay, voucher)
        assert back["status"] == "issued" and back["usable_now"]
        w = await wallet(pay, customer)
        assert w["total"] == twd(BALANCE) and w["held"] == twd(0)

        # The card charge of the remainder arrives after all: recorded to be returned, nothing captured.
        await send(client, stack, charge_succeeded(order_id, amount=REMAINDER))
        view = await pay.wait(order_id, lambda t: bool(t["payments_to_return"]))
        assert [p["tender"]["amount"] for p in view["payments_to_return"]] == [twd(REMAINDER)]
        assert view["status"] == "voided" and view["prepaid_tenders"] == []
        assert (await voucher_status(pay, voucher))["status"] == "issued"
    finally:
        await client.aclose()
        orders.stop()


# --- a charge of another amount ----------------------------------------------------------------------------


async def test_a_charge_that_is_not_the_remainder_is_recorded_to_be_returned_and_the_reservation_stays(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer, voucher = await member_with_voucher(pay)
    order_id = await place(client, pay, customer)
    await reserve(pay, order_id, customer)

    await send(client, stack, charge_succeeded(order_id, amount=PREPAYMENT))  # the whole prepayment, by mistake
    view = await pay.wait(order_id, lambda t: bool(t["payments_to_return"]))
    [back] = view["payments_to_return"]
    assert back["tender"]["amount"] == twd(PREPAYMENT) and "remainder" in back["reason"]
    assert view["status"] == "unpaid" and view["reservation"]["remainder"] == twd(REMAINDER)
    assert (await voucher_status(pay, voucher))["status"] == "bound"
    assert (await client.order(order_id))["status"] == "awaiting_prepayment"

    await pay_remainder_by_card(client, stack, pay, order_id, customer)  # the right amount: captured
    view = await pay.wait(order_id, lambda t: t["status"] == "prepaid")
    assert sum(a for _, a in kinds(view["prepaid_tenders"])) == PREPAYMENT  # reserved + card = prepayment
    assert [p["tender"]["amount"] for p in view["payments_to_return"]] == [twd(PREPAYMENT)]  # still owed back


# --- bad input -----------------------------------------------------------------------------------------------


async def test_bad_reservation_input_is_refused_naming_the_field_and_stores_nothing(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer, voucher = await member_with_voucher(pay)
    order_id = await place(client, pay, customer)
    streams = (f"transaction-{order_id}", f"payment-{order_id}", f"wallet-{customer}", f"voucher-{voucher}")
    me = who(customer, "customer")
    reserve_body = {"use_vouchers": True, "use_balance": True, "allow_remainder": True}

    async def refused(path: str, body: dict[str, Any] | None, headers: dict[str, str], status: int,
                      field: str | None) -> dict[str, Any]:
        before = await versions(stack.pg_dsn, *streams)
        r = await pay.post(f"/payments/{order_id}{path}", body, headers)
        assert r.status_code == status, (path, body, r.text)
        error = r.json()["error"]
        if field is not None:
            fields = error["details"]["fields"]
            assert field in [f["field"] for f in fields] and all(f.get("rule") for f in fields), error
        assert await versions(stack.pg_dsn, *streams) == before, (path, body)
        return error

    await refused("/prepay", {**reserve_body, "allow_remainder": "maybe"}, me, 422, "allow_remainder")
    await refused("/prepay", {"use_balance": True, "allow_remainder": True, "voucher_id": uid("v")}, me, 422,
                  "voucher_id")  # not the customer's voucher
    await refused("/prepay", reserve_body, who(uid("c"), "customer"), 403, "X-Actor")
    await refused("/prepay/cancel", None, me, 409, None)  # nothing reserved yet
    stranger = uid("c")  # no voucher, no balance: nothing to reserve
    other = await place(client, pay, stranger)
    r = await pay.post(f"/payments/{other}/prepay", reserve_body, who(stranger, "customer"))
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "prepayment", r.text
    assert (await pay.transaction(other))["reservation"] is None

    await reserve(pay, order_id, customer)
    error = await refused("/prepay", reserve_body, me, 409, None)  # one reservation at a time
    assert error["details"]["reservation"]["remainder"] == twd(REMAINDER)
    await refused("/attempts", {"amount": twd(50000), "method": "credit_card"}, me, 422, "amount")
    await refused("/prepay/cancel", {"reason": ""}, me, 422, "reason")
    await refused("/prepay/cancel", None, who(uid("c"), "customer"), 403, "X-Actor")
    await refused("/prepay/cancel", {"reason": "x", "surprise": 1}, me, 422, "surprise")
    view = await pay.transaction(order_id)
    assert view["reservation"]["remainder"] == twd(REMAINDER) and view["status"] == "unpaid"
