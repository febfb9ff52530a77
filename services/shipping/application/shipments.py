"""Outbound shipments, exactly once per (RMA or order, action) (seed 001, cases 5 and 11).

Two entry points reach `ship()`: the reaction to RmaReplacementReady (services/shipping/
application/reactions.py) and `POST /shipments` (Idempotency-Key required). Whatever the number of
concurrent or retried requests and redelivered or re-emitted events, one Shipment stream with one
ShipmentCreated exists per (subject, action); every later attempt gets that shipment back (HTTP 200,
the same body, `Shipment-Existing: true`), or a 409 if it asks for something else (another SKU,
warehouse, address, carrier) under the same (subject, action).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.eventstore import EventStore
from services.shipping.application.common import clash_is_a_conflict, lock_subject, require_role
from services.shipping.application.projections import SUBJECT_CONSTRAINT, project_shipment, shipment_view
from services.shipping.domain.carriers import carrier, carrier_for, service_level, service_level_eta, tracking_number
from services.shipping.domain.shipment import Shipment, ShipmentRequest, Subject, shipment_id_for, subject_of

CREATE_ROLES = frozenset({"service", "platform"})
IDEMPOTENCY_SCOPE = "shipping:shipments"

NewShipmentHook = Callable[[UnitOfWork, Shipment, datetime], Awaitable[None]]


class ShipmentDiffers(Conflict):
    """(subject, action) is shipped already, with other details: not a retry but another shipment."""

    code = "shipment_exists"


@dataclass
class ShipmentsService:
    store: EventStore
    clock: Callable[[], datetime]
    on_new_shipment: NewShipmentHook | None = None  # the duplicate detector's rule 4

    async def ship(self, uow: UnitOfWork, subject: Subject, request: ShipmentRequest) -> tuple[Shipment, bool]:
        """The shipment of (subject, request.action): the existing one (False), or a new one (True).

        Exactly once is enforced twice over, on purpose:

        1. The stream. The shipment id is a function of (subject, action), so every attempt names
           the same stream `shipment-{id}`; its first event is appended at expected version 0, and
           the event store refuses a second writer (WrongExpectedVersion: the loser's transaction
           rolls back and is run again, and then finds the shipment). This is what keeps the *event
           store*, the source of truth the relay publishes and auditors replay, from ever holding
           two ShipmentCreated for one (subject, action) -- so rma, notifications and a rebuilt
           read model can never see two.
        2. The unique constraint shipping_shipments_one_per_subject_action on (subject, action) in
           the read model, written in the same transaction. It does not depend on how the id is
           computed: a writer that derived another id (a changed id scheme, a migration, a bug, an
           operator's tool writing a shipment by hand) cannot commit a second shipment for the
           same (subject, action) either, because its events and its row commit together or not
           at all. The stream alone trusts every writer to compute the same id; the constraint
           alone would let the store hold a second ShipmentCreated if a writer skipped the read
           model. Together, neither assumption is needed.

        The advisory lock on (subject, action) is not part of the guarantee: it makes concurrent
        attempts wait for the first instead of failing and retrying (5 concurrent requests give 1
        append and 4 reads, not 4 conflicts), and it orders shipping against manifest imports of
        the same subject (the duplicate detector).
        """
        conn = uow.conn
        await lock_subject(conn, subject.kind, subject.id, request.action)
        existing = await conn.fetchval(
            "SELECT shipment_id FROM shipping_shipments WHERE subject_kind = $1 AND subject_id = $2 AND action = $3",
            subject.kind, subject.id, request.action)
        shipment = await uow.load(Shipment, existing or shipment_id_for(subject, request.action))
        if shipment.exists:
            differs = shipment.differences(request)
            if differs:
                raise ShipmentDiffers(
                    f"{subject} already has its {request.action} shipment {shipment.id}, with another "
                    f"{', '.join(differs)}; a second parcel needs another action",
                    shipment_id=shipment.id, fields=[{"field": f, "rule": "differs from the existing shipment"}
                                                     for f in differs])
            return shipment, False
        c = carrier(request.carrier) if request.carrier else carrier_for(request.ship_to.country)
        level = service_level(c, request.service_level)
        at = self.clock()
        shipment = Shipment.create(subject, request, c.code, level, tracking_number(c, shipment.id, outbound=True),
                                   service_level_eta(c, level, at), at)
        uow.add(shipment)
        await uow.flush()  # guarantee 1: a concurrent creator of this stream fails here
        async with clash_is_a_conflict(shipment.stream_id, [SUBJECT_CONSTRAINT, "shipping_shipments_pkey"]):
            await project_shipment(conn, shipment, at)  # guarantee 2
        if self.on_new_shipment is not None:
            await self.on_new_shipment(uow, shipment, at)
        return shipment, True

    async def create(self, request: ShipmentRequest, ctx: CommandContext) -> CommandResult:
        """POST /shipments (roles service, platform; Idempotency-Key required). The response is
        {"created": bool, "shipment": view}."""
        require_role(ctx.role, CREATE_ROLES, "create shipments")
        if not ctx.idempotency_key:
            raise RuleViolation("Idempotency-Key", "is required to create a shipment, so that a retried or doubled "
                                                   "request cannot ship twice")
        subject = subject_of(request.rma_id, request.order_id)

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            shipment, created = await self.ship(uow, subject, request)
            return {"created": created, "shipment": await self.view(shipment.id, conn=uow.conn)}

        return await execute(self.store, ctx, IDEMPOTENCY_SCOPE, fn)

    # --- queries ---------------------------------------------------------------------------------
    async def view(self, shipment_id: str, *, conn: Any = None) -> dict[str, Any]:
        row = await (conn or self.store.pool).fetchrow("SELECT * FROM shipping_shipments WHERE shipment_id = $1",
                                                       shipment_id)
        if row is None:
            raise NotFound(f"shipment {shipment_id} not found", id=shipment_id)
        return shipment_view(row)

    async def search(self, rma_id: str | None, order_id: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await self.store.pool.fetch(
            """SELECT * FROM shipping_shipments
                WHERE ($1::text IS NULL OR rma_id = $1) AND ($2::text IS NULL OR order_id = $2)
                ORDER BY created_at DESC, shipment_id LIMIT $3""", rma_id, order_id, limit)
        return [shipment_view(r) for r in rows]
