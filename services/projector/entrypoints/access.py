"""Who may read what from the projector (libs/auth/policy.py): a customer or merchant only their own
orders (someone else's is a 404, like a missing one), a customer's list only filtered on
themselves; staff and the auditor everything; the operations console, the reconciliation reports and
the rebuilds for operations (running or deciding them for the roles the domain names)."""

from __future__ import annotations

from typing import Any

from libs.auth import OPERATIONS, PARTIES, READERS, STAFF, AccessTable, Open, Own, Parties, Role, allow
from services.parties import order_parties


async def _order(conn: Any, _param: str, order_id: str) -> Parties | None:
    return await order_parties(conn, order_id)


ORDER = Own.lookup_by("order", "order_id", _order)
CONSOLE = allow(READERS, OPERATIONS)
PAGE = allow(READERS, OPERATIONS, browser=True)  # also with the console's session cookie

ACCESS: AccessTable = {
    "GET /orders/{order_id}": allow(PARTIES, READERS, own=ORDER),
    "GET /orders/{order_id}/history": allow(PARTIES, READERS, own=ORDER),
    "GET /orders": allow(Role.customer, READERS, own=Own.query("customer", "order")),
    # The operations console (pages and their JSON twins).
    "GET /console": PAGE,
    "GET /console/data": PAGE,
    "GET /console/history": PAGE,
    "GET /console/history.json": PAGE,
    "GET /console/login": Open("the sign-in form: asks for a token, shows nothing"),
    "POST /console/login": Open("checks the token it is given, as the gate does, and sets the session cookie"),
    "POST /console/logout": Open("clears the session cookie"),
    # Reconciliation and rebuilds (the roles of services/projector/domain/reconciliation.py's checks).
    "POST /reconciliations": allow(Role.reconciler, Role.approver, STAFF),
    "GET /reconciliations": CONSOLE,
    "GET /reconciliations/{run_id}": CONSOLE,
    "GET /reconciliations/{run_id}.html": PAGE,
    "GET /discrepancies": CONSOLE,
    "GET /discrepancies/{discrepancy_id}": CONSOLE,
    "POST /discrepancies/{discrepancy_id}/acknowledge": allow(Role.reconciler, Role.approver),
    "POST /discrepancies/{discrepancy_id}/resolve": allow(Role.approver),
    "POST /rebuilds": allow(Role.reconciler, STAFF),
    "GET /rebuilds": CONSOLE,
    "GET /rebuilds/{rebuild_id}": CONSOLE,
}
