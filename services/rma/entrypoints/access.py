"""Who may call each route of the RMA API (libs/auth/policy.py). The command roles mirror the
domain's checks (application/service.py `require_role`, which also keeps a customer to their own
RMAs); a customer reads only their own RMAs (someone else's is a 404) and lists only their own."""

from __future__ import annotations

from typing import Any

from libs.auth import OPERATIONS, READERS, STAFF, AccessTable, Own, Parties, Role, allow


async def _rma(conn: Any, _param: str, rma_id: str) -> Parties | None:
    customer = await conn.fetchval("SELECT customer_id FROM rma_cases WHERE rma_id = $1", rma_id)
    return None if customer is None else Parties(customer_id=customer)


CASEWORK = allow(READERS, Role.reconciler, Role.approver)  # RMAs, transfers, stock, quality
REFERENCE = allow(Role.customer, READERS, OPERATIONS)  # the catalogue and the fault dictionary

ACCESS: AccessTable = {
    "POST /rmas": allow(Role.customer, STAFF),
    "GET /rmas": allow(Role.customer, READERS, Role.reconciler, Role.approver, own=Own.query("customer", "RMA")),
    "GET /rmas/{rma_id}": allow(Role.customer, READERS, Role.reconciler, Role.approver,
                                own=Own.lookup_by("RMA", "rma_id", _rma)),
    "POST /rmas/{rma_id}/review": allow(Role.reconciler),
    "POST /rmas/{rma_id}/cancel": allow(Role.customer, STAFF),
    "POST /rmas/{rma_id}/start-processing": allow(STAFF),
    "POST /rmas/{rma_id}/substitution/approve": allow(Role.approver),
    "POST /rmas/{rma_id}/substitution/refuse": allow(Role.approver),
    "POST /rmas/{rma_id}/replacement/retry": allow(STAFF),
    "GET /transfers": CASEWORK,
    "GET /transfers/{transfer_id}": CASEWORK,
    "POST /transfers/{transfer_id}/accept": allow(STAFF),
    "POST /transfers/{transfer_id}/refuse": allow(STAFF),
    "PUT /stock/{warehouse_id}/{sku}": allow(STAFF),
    "GET /stock": CASEWORK,
    "PUT /warehouses/{warehouse_id}": allow(STAFF),
    "GET /warehouses": CASEWORK,
    "PUT /catalogue/{sku}": allow(STAFF),
    "GET /catalogue": REFERENCE,
    "GET /catalogue/{sku}": REFERENCE,
    "GET /substitution-policy": REFERENCE,
    "POST /warranty/registrations": allow(Role.customer, STAFF),
    "POST /sales-records": allow(Role.importer, STAFF),
    "GET /warranty/{serial}": allow(READERS, OPERATIONS),
    "GET /faults": REFERENCE,
    "GET /quality/fault-counts": CASEWORK,
    "GET /quality/repeat-failures": CASEWORK,
    "GET /quality/replacement-demand": CASEWORK,
}
