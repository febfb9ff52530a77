"""Who may call each route of the payments API (libs/auth/policy.py). The command roles are the
domain's own (the constants its checks use); which order, wallet or voucher a customer or merchant
may act on is checked on the aggregate the command loads (domain/checkout.py `require_party`). A
customer or merchant reads only their own: someone else's order, refund or voucher is a 404."""

from __future__ import annotations

from typing import Any

from libs.auth import PARTIES, READERS, AccessTable, Open, Own, Parties, Role, allow
from services.parties import order_parties
from services.payments.application.refunds import ISSUE_ROLES
from services.payments.application.transactions import PAYER_ROLES, SETTLE_ROLES
from services.payments.application.vouchers import ISSUER_ROLES
from services.payments.application.wallets import BALANCE_ROLES
from services.payments.domain.kolable.decisions import DECIDE_ROLES, IMPORT_ROLES, MARK_ROLES
from services.payments.domain.voucher import Voucher, VoucherIssued


async def _order(conn: Any, _param: str, order_id: str) -> Parties | None:
    return await order_parties(conn, order_id)


async def _refund(conn: Any, _param: str, refund_id: str) -> Parties | None:
    order_id = await conn.fetchval("SELECT order_id FROM payments_refunds WHERE refund_id = $1", refund_id)
    return None if order_id is None else await order_parties(conn, order_id)


async def _voucher(conn: Any, _param: str, voucher_id: str) -> Parties | None:
    customer = await conn.fetchval(
        "SELECT data->>'customer_id' FROM events WHERE stream_id = $1 AND stream_version = 1 AND event_type = $2",
        Voucher.stream_id_for(voucher_id), VoucherIssued.event_type)
    return None if customer is None else Parties(customer_id=customer)


ORDER = Own.lookup_by("order", "order_id", _order)
ORDER_READ = allow(PARTIES, READERS, own=ORDER)
WAR_ROOM = allow(READERS, IMPORT_ROLES, MARK_ROLES, DECIDE_ROLES)
OPERATIONS_READ = allow(READERS, Role.reconciler, Role.approver)

ACCESS: AccessTable = {
    "POST /webhooks/stripe": Open("signed by Stripe (Stripe-Signature, the endpoint secrets)"),
    # disputes: operations work on them; the customer's bank, not the customer, files them
    "GET /disputes": OPERATIONS_READ,
    "GET /disputes/{dispute_id}": OPERATIONS_READ,
    "GET /disputes/{dispute_id}/evidence-packet": OPERATIONS_READ,
    # the Kolable war room (seed 000): Wade imports, Huber marks, Louis decides
    "POST /kolable/orders/import": allow(IMPORT_ROLES),
    "GET /kolable/reconciliation/scorecard": WAR_ROOM,
    "GET /kolable/orders/{order_id}": WAR_ROOM,
    "POST /kolable/orders/{order_id}/marks": allow(MARK_ROLES),
    "POST /kolable/refund-decisions": allow(DECIDE_ROLES),
    # wallets
    "POST /wallets/{customer_id}/top-ups": allow(BALANCE_ROLES),
    "GET /wallets/{customer_id}": allow(Role.customer, READERS, own=Own.path("customer_id", "wallet")),
    "POST /payments/{order_id}/prepay-with-balance": allow(BALANCE_ROLES),
    # an order's transaction
    "GET /payments/{order_id}": ORDER_READ,
    "POST /payments/{order_id}/attempts": allow(PAYER_ROLES),
    "POST /payments/{order_id}/attempts/{attempt_id}/abandon": allow(PAYER_ROLES),
    "GET /payments/{order_id}/settlement-preview": ORDER_READ,
    "GET /payments/{order_id}/cancellation-preview": ORDER_READ,
    "GET /payments/{order_id}/prepay-preview": ORDER_READ,
    "POST /payments/{order_id}/prepay": allow(PAYER_ROLES),
    "POST /payments/{order_id}/prepay/cancel": allow(PAYER_ROLES),
    "POST /payments/{order_id}/settle": allow(SETTLE_ROLES),
    "POST /payments/{order_id}/cash-confirmation": allow(Role.merchant),
    # vouchers
    "POST /vouchers": allow(ISSUER_ROLES),
    "GET /vouchers/{voucher_id}": allow(Role.customer, READERS, own=Own.lookup_by("voucher", "voucher_id", _voucher)),
    "GET /customers/{customer_id}/vouchers": allow(Role.customer, READERS,
                                                   own=Own.path("customer_id", "customer")),
    # refunds
    "POST /payments/{order_id}/refunds": allow(ISSUE_ROLES),
    "GET /payments/{order_id}/refunds": ORDER_READ,
    "GET /refunds": OPERATIONS_READ,
    "GET /refunds/{refund_id}": allow(PARTIES, READERS, Role.reconciler, Role.approver,
                                      own=Own.lookup_by("refund", "refund_id", _refund)),
    "POST /refunds/{refund_id}/retry": allow(ISSUE_ROLES),
    # the merchant's record
    "GET /merchants/{merchant_id}/record": allow(Role.merchant, READERS, own=Own.path("merchant_id", "merchant")),
}
