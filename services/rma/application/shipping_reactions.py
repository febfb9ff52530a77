"""How the RMA reacts to shipping's contract events (topic shipping.events), inside the consumer's
transaction (libs/application/reactions.py + libs/messaging/consumer.py: the effect, the processed
event id and the offsets commit together, so a redelivered event changes nothing).

- ReturnLabelIssued: the label is shown on the RMA (read model only).
- InboundParcelScanned: SHIPPED_IN (a second scan of the parcel changes nothing).
- ShipmentCreated for the RMA's `ship_replacement`: SHIPPED_OUT with the tracking number, and the
  replacement unit's serial gets its own warranty record (its window starts the day it left). The
  same shipment reported again changes nothing; another shipment for an RMA already shipped out is
  refused (logged, counted in /readyz): shipping's duplicate-shipment follow-up deals with it.
- ShipmentStatusChanged: the carrier's latest status on the RMA; `Delivered` of its shipment: CLOSED.
Shipments of orders (no rma_id) are none of this service's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from libs.application.reactions import Reactions
from libs.application.unit_of_work import UnitOfWork
from libs.domain.events import DomainEvent
from libs.eventstore import EventStore
from services.rma.application import projections
from services.rma.domain.rma import Rma
from services.rma.domain.warranty import TAIPEI, WarrantyRecord
from services.shipping.domain import events as ship

log = logging.getLogger("closeloop.rma.shipping")

REPLACEMENT_ACTION = "ship_replacement"


class ShippingReactions(Reactions):
    def __init__(self, store: EventStore, clock: Callable[[], datetime], tz: ZoneInfo = TAIPEI) -> None:
        super().__init__(store, self.react, actor="rma")
        self.clock = clock
        self.tz = tz

    async def react(self, uow: UnitOfWork, event: DomainEvent) -> None:
        at = self.clock()
        match event:
            case ship.ReturnLabelIssued():
                await projections.record_label(uow.conn, event)
            case ship.InboundParcelScanned():
                rma = await uow.get(Rma, event.rma_id)
                if rma.receive_parcel(event.label_id, at):
                    await projections.save(uow, rma)
            case ship.ShipmentCreated() if event.rma_id is not None and event.action == REPLACEMENT_ACTION:
                rma = await uow.get(Rma, event.rma_id)
                if rma.ship_out(shipment_id=event.shipment_id, carrier=event.carrier,
                                tracking_number=event.tracking_number, eta=event.eta, at=at):
                    assert rma.ready is not None and rma.ready.replacement_serial is not None
                    record = await uow.load(WarrantyRecord, rma.ready.replacement_serial)
                    record.record_replacement(sku=rma.ready.sku, rma_id=rma.id, replaces_serial=rma.serial, at=at,
                                              tz=self.tz)
                    await projections.save(uow, rma, record)
            case ship.ShipmentStatusChanged() if event.rma_id is not None:
                await projections.record_tracking(uow.conn, event)
                if event.status is ship.TrackingStatus.DELIVERED:
                    rma = await uow.get(Rma, event.rma_id)
                    if rma.shipped is None or rma.shipped.shipment_id != event.shipment_id:
                        log.warning("delivery of shipment %s is not RMA %s's replacement shipment; ignored",
                                    event.shipment_id, rma.id)
                        return
                    if rma.close("replacement_delivered", event.shipment_id, at):
                        await projections.save(uow, rma)
            case _:
                pass
