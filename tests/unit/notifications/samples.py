"""Sample contract events of one RMA (the mouse of seed 001), for the notifications unit tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from libs.domain.events import DomainEvent
from services.notifications.domain.events import SlaBreachWarning
from services.rma.domain import events as rma
from services.shipping.domain import events as ship

T0 = datetime(2025, 8, 1, 2, 0, tzinfo=UTC)  # 10:00 in Taipei
RMA_ID = "rma-mouse-1"
CONTACT = rma.Contact(customer_id="cust-1", email="ming@example.com", phone="+886912345678", locale="zh-TW")
ADDRESS = rma.ShippingAddress(name="王小明", line1="信義路五段7號", city="台北市", postal_code="110")
BASIS = rma.WarrantyBasis(source="sales_record", reference="INV-2003-12", purchase_date=date(2024, 12, 20),
                          warranty_days=365, expires_on=date(2025, 12, 19), checked_on=date(2025, 8, 1))


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def story() -> dict[str, DomainEvent]:
    """Every contract event of the flow, by name."""
    return {
        "RmaOpened": rma.RmaOpened(rma_id=RMA_ID, serial="SN-2003-0001", sku="MS-WL-OPT-01", fault_code="btn_l_dbl",
                                   description="left button double-clicks", contact=CONTACT, ship_to=ADDRESS,
                                   at=at(0)),
        "RmaEligible": rma.RmaEligible(rma_id=RMA_ID, serial="SN-2003-0001", sku="MS-WL-OPT-01", basis=BASIS,
                                       contact=CONTACT, ship_to=ADDRESS, at=at(1)),
        "ReturnLabelIssued": ship.ReturnLabelIssued(label_id="lbl-1", rma_id=RMA_ID, carrier="tcat",
                                                    tracking_number="RT123456789TW", barcode_payload="RMA-MOUSE-1",
                                                    qr_payload="closeloop://labels/lbl-1?rma=rma-mouse-1",
                                                    contact=CONTACT, at=at(1.1)),
        "InboundParcelScanned": ship.InboundParcelScanned(label_id="lbl-1", rma_id=RMA_ID, location="Taoyuan hub",
                                                          scanned_at=at(30), at=at(30)),
        "RmaShippedIn": rma.RmaShippedIn(rma_id=RMA_ID, label_id="lbl-1", at=at(30.1)),
        "RmaReplacementReady": rma.RmaReplacementReady(rma_id=RMA_ID, sku="MS-WL-OPT-02", same_sku=False,
                                                       warehouse_id="wh-north", contact=CONTACT, ship_to=ADDRESS,
                                                       at=at(50)),
        "ShipmentCreated": ship.ShipmentCreated(shipment_id="shp-1", rma_id=RMA_ID, action="ship_replacement",
                                                sku="MS-WL-OPT-02", warehouse_id="wh-north", carrier="tcat",
                                                tracking_number="TC987654321", ship_to=ADDRESS, contact=CONTACT,
                                                eta=at(75), at=at(51)),
        "RmaShippedOut": rma.RmaShippedOut(rma_id=RMA_ID, shipment_id="shp-1", carrier="tcat",
                                           tracking_number="TC987654321", eta=at(75), at=at(51.1)),
        "OutForDelivery": ship.ShipmentStatusChanged(shipment_id="shp-1", rma_id=RMA_ID,
                                                     tracking_number="TC987654321",
                                                     status=ship.TrackingStatus.OUT_FOR_DELIVERY,
                                                     carrier_status="配送中", location="台北信義營業所",
                                                     occurred_at=at(72), eta=at(74), at=at(72.01)),
        "Exception": ship.ShipmentStatusChanged(shipment_id="shp-1", rma_id=RMA_ID, tracking_number="TC987654321",
                                                status=ship.TrackingStatus.EXCEPTION, carrier_status="地址不明",
                                                location="台北信義營業所", occurred_at=at(73), at=at(73.01)),
        "ReturnedToSender": ship.ShipmentStatusChanged(shipment_id="shp-1", rma_id=RMA_ID,
                                                       tracking_number="TC987654321",
                                                       status=ship.TrackingStatus.RETURNED_TO_SENDER,
                                                       carrier_status="", occurred_at=at(73.5), at=at(73.51)),
        "Delivered": ship.ShipmentStatusChanged(shipment_id="shp-1", rma_id=RMA_ID, tracking_number="TC987654321",
                                                status=ship.TrackingStatus.DELIVERED, carrier_status="已送達",
                                                location="台北市", occurred_at=at(74), at=at(74.01)),
        "RmaClosed": rma.RmaClosed(rma_id=RMA_ID, resolution="replaced", at=at(74.1)),
        "RmaRejected": rma.RmaRejected(rma_id=RMA_ID, reason="warranty expired on 2025-01-01", basis=BASIS, at=at(1)),
        "RmaCancelled": rma.RmaCancelled(rma_id=RMA_ID, reason="customer withdrew the request", at=at(2)),
        "SlaBreachWarning": SlaBreachWarning(subject_type="rma", subject_id=RMA_ID, stage="eligible",
                                             started_at=at(1), due_at=at(1 + 7 * 24), at=at(1 + 7 * 24)),
    }
