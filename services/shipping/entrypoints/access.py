"""Who may call each route of the shipping API (libs/auth/policy.py). The command roles are the
application's own (the constants its checks use). A customer (and, for an order's parcels, its
merchant) reads only their own labels, shipments and tracking: someone else's is a 404, whether
asked by id, by tracking number or by RMA id. The carrier webhooks carry their own signature."""

from __future__ import annotations

from typing import Any

from libs.auth import OPERATIONS, PARTIES, READERS, AccessTable, Open, Own, Parties, Role, allow
from services.parties import order_parties, rma_parties, subject_parties
from services.shipping.application.duplicates import IMPORT_ROLES, RESOLVE_ROLES
from services.shipping.application.labels import SCAN_ROLES
from services.shipping.application.shipments import CREATE_ROLES


async def _label(conn: Any, _param: str, label_id: str) -> Parties | None:
    rma_id = await conn.fetchval("SELECT rma_id FROM shipping_labels WHERE label_id = $1", label_id)
    return None if rma_id is None else await rma_parties(conn, rma_id)


async def _shipment(conn: Any, _param: str, shipment_id: str) -> Parties | None:
    row = await conn.fetchrow("SELECT subject_kind, subject_id FROM shipping_shipments WHERE shipment_id = $1",
                              shipment_id)
    return None if row is None else await subject_parties(conn, row["subject_kind"], row["subject_id"])


async def _subject(conn: Any, param: str, value: str) -> Parties | None:
    return await (rma_parties(conn, value) if param == "rma_id" else order_parties(conn, value))


async def _tracked(conn: Any, _param: str, ref: str) -> Parties | None:
    """A tracking number (of a shipment or a return label) or an RMA id, as GET /track resolves it."""
    number = ref.strip().upper()
    row = await conn.fetchrow("SELECT subject_kind, subject_id FROM shipping_shipments WHERE tracking_number = $1",
                              number)
    if row is not None:
        return await subject_parties(conn, row["subject_kind"], row["subject_id"])
    rma_id = await conn.fetchval("SELECT rma_id FROM shipping_labels WHERE tracking_number = $1", number)
    return await rma_parties(conn, rma_id or ref)


TRACKED = allow(PARTIES, READERS, own=Own.lookup_by("parcel", "ref", _tracked))
FOLLOW_UP = allow(READERS, OPERATIONS)

ACCESS: AccessTable = {
    "GET /labels/{label_id}": allow(Role.customer, READERS, own=Own.lookup_by("label", "label_id", _label)),
    "GET /labels": allow(Role.customer, READERS, own=Own.lookup_by("RMA", "rma_id", _subject)),
    "POST /labels/{label_id}/scan": allow(SCAN_ROLES),
    "POST /labels/scan": allow(SCAN_ROLES),
    "POST /shipments": allow(CREATE_ROLES),
    "GET /shipments/{shipment_id}": allow(PARTIES, READERS, own=Own.lookup_by("shipment", "shipment_id", _shipment)),
    "GET /shipments": allow(PARTIES, READERS, own=Own.lookup_by("shipments", ("rma_id", "order_id"), _subject)),
    "POST /carriers/{carrier}/events": Open("signed by the carrier (X-Carrier-Signature, the carrier secrets)"),
    "GET /track/{ref}": TRACKED,
    "GET /track/{ref}/page": TRACKED,
    "POST /manifests/import": allow(IMPORT_ROLES),
    "GET /manifests/{manifest_id}": FOLLOW_UP,
    "GET /duplicates": FOLLOW_UP,
    "GET /duplicates/{duplicate_id}": FOLLOW_UP,
    "POST /duplicates/{duplicate_id}/resolve": allow(RESOLVE_ROLES),
}
