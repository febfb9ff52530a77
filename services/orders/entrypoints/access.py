"""Who may call each route of the orders API (libs/auth/policy.py). Which order a customer or merchant
may act on is the domain's check (services/orders/domain/access.py), made on the order it loads."""

from __future__ import annotations

from libs.auth import PARTIES, READERS, STAFF, AccessTable, Own, Role, allow

ACCESS: AccessTable = {
    "POST /orders": allow(Role.customer, STAFF),
    "POST /orders/{order_id}/accept": allow(Role.merchant, STAFF),
    "POST /orders/{order_id}/start": allow(Role.merchant, STAFF),
    "POST /orders/{order_id}/bill": allow(Role.merchant, STAFF),
    "POST /orders/{order_id}/bill/adjust": allow(Role.merchant, STAFF),
    "POST /orders/{order_id}/bill/confirm": allow(Role.customer, STAFF),
    "POST /orders/{order_id}/cancel": allow(PARTIES, STAFF),
    "PUT /customers/{customer_id}/credit-score": allow(STAFF),  # the credit bureau's integration
    "GET /customers/{customer_id}/standing": allow(Role.customer, READERS, own=Own.path("customer_id", "customer")),
    "PUT /platform/conditions": allow(STAFF),
    "GET /policy/prepayment": allow(PARTIES, READERS),
}
