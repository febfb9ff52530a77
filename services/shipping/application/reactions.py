"""The shipping service's reactions to the RMA service's contract events (rma.events), run by
libs/application/reactions.py inside the consumer's transaction (effectively once per event id).

- RmaEligible → the RMA's return label (once per RMA: labels.py).
- RmaReplacementReady → the outbound shipment of (RMA, action) (exactly once: shipments.py). A
  redelivery (same event id) is dropped by the consumer's processed-event records; a re-emitted
  event (new id, same RMA and action) finds the shipment and creates nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libs.application.unit_of_work import UnitOfWork
from libs.domain.events import DomainEvent
from services.rma.domain.events import RmaEligible, RmaReplacementReady
from services.shipping.application.labels import LabelsService
from services.shipping.application.shipments import ShipmentsService
from services.shipping.domain.shipment import ShipmentRequest, Subject


def rma_reactions(labels: LabelsService,
                  shipments: ShipmentsService) -> Callable[[UnitOfWork, DomainEvent], Awaitable[None]]:
    async def react(uow: UnitOfWork, event: DomainEvent) -> None:
        if isinstance(event, RmaEligible):
            await labels.issue_for_rma(uow, event.rma_id, event.contact, event.ship_to)
        elif isinstance(event, RmaReplacementReady):
            request = ShipmentRequest(rma_id=event.rma_id, action=event.action, sku=event.sku,
                                      warehouse_id=event.warehouse_id, ship_to=event.ship_to, contact=event.contact)
            await shipments.ship(uow, Subject("rma", event.rma_id), request)

    return react
