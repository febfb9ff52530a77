"""The Shipment aggregate (seed 001, cases 5, 9, 11): one id per (subject, action), a second request
compared field by field, the carriers' tracking numbers and service-level ETA, and ShipmentStatusChanged
recorded only when the status changes (never for a duplicate or a stale event)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.domain.errors import RuleViolation
from services.rma.domain.events import ShippingAddress
from services.shipping.domain.carriers import (
    CARRIERS,
    LOCAL_TZ,
    carrier,
    carrier_for,
    service_level,
    service_level_eta,
    tracking_number,
)
from services.shipping.domain.events import (
    ShipmentCreated,
    ShipmentStatusChanged,
    ShipmentTrackingRecorded,
    TrackingStatus,
    TrackingVia,
)
from services.shipping.domain.shipment import Shipment, ShipmentRequest, Subject, shipment_id_for, subject_of
from tests.unit.shipping import update

AT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
ADDRESS = ShippingAddress(name="林小姐", line1="中山路 1 號", city="Taipei")
IT, OD, DL = TrackingStatus.IN_TRANSIT, TrackingStatus.OUT_FOR_DELIVERY, TrackingStatus.DELIVERED


def request(**kw: object) -> ShipmentRequest:
    return ShipmentRequest(**{"rma_id": "RMA-1", "action": "ship_replacement", "sku": "MOUSE-NEW",
                              "warehouse_id": "WH-TPE", "ship_to": ADDRESS, **kw})  # type: ignore[arg-type]


def test_the_shipment_id_is_a_function_of_subject_and_action() -> None:
    s = Subject("rma", "RMA-1")
    assert shipment_id_for(s, "ship_replacement") == shipment_id_for(s, "ship_replacement")
    assert shipment_id_for(s, "ship_replacement") != shipment_id_for(s, "ship_accessory")
    assert shipment_id_for(s, "ship_replacement") != shipment_id_for(Subject("order", "RMA-1"), "ship_replacement")


@pytest.mark.parametrize(("rma", "order"), [(None, None), ("RMA-1", "ORD-1")])
def test_exactly_one_subject(rma: str | None, order: str | None) -> None:
    with pytest.raises(RuleViolation) as exc:
        subject_of(rma, order)
    assert exc.value.field == "rma_id"


def created() -> Shipment:
    s = Shipment.create(Subject("rma", "RMA-1"), request(), "island", "standard", "970000000001", None, AT)
    [e] = s.pending
    assert isinstance(e, ShipmentCreated) and e.rma_id == "RMA-1" and e.service_level == "standard"
    s.mark_saved()
    return s


def test_a_second_request_is_compared_field_by_field() -> None:
    s = created()
    assert s.differences(request()) == []
    assert s.differences(request(contact=None, carrier="island")) == []
    assert s.differences(request(sku="MOUSE-OLD", warehouse_id="WH-2", carrier="globex")) == [
        "sku", "warehouse_id", "carrier"]


def test_status_changed_only_when_the_status_changes() -> None:
    s = created()
    assert s.record_tracking(update(IT, 0, number="970000000001"), TrackingVia.HTTP, AT).status_changed
    assert [type(e) for e in s.pending] == [ShipmentTrackingRecorded, ShipmentStatusChanged]
    changed = s.pending[1]
    assert isinstance(changed, ShipmentStatusChanged) and changed.previous_status is None and changed.status is IT
    s.mark_saved()
    # the same event again (another channel): nothing recorded
    outcome = s.record_tracking(update(IT, 0, number="970000000001"), TrackingVia.KAFKA, AT)
    assert not outcome.new and s.pending == []
    # another hub, same status: history only
    assert not s.record_tracking(update(IT, 30, "id:hub2"), TrackingVia.HTTP, AT).status_changed
    assert [type(e) for e in s.pending] == [ShipmentTrackingRecorded]
    s.mark_saved()
    assert s.record_tracking(update(DL, 300), TrackingVia.HTTP, AT).status_changed
    s.mark_saved()
    # a late OutForDelivery stamped before the delivery: history only, Delivered stays
    outcome = s.record_tracking(update(OD, 200), TrackingVia.HTTP, AT)
    assert outcome.new and not outcome.status_changed and s.status is DL
    assert [type(e) for e in s.pending] == [ShipmentTrackingRecorded]


def test_rehydrated_shipment_has_its_status_and_history() -> None:
    s = created()
    s.record_tracking(update(IT, 0), TrackingVia.HTTP, AT)
    s.record_tracking(update(OD, 60), TrackingVia.HTTP, AT)
    events = [ShipmentCreated(shipment_id=s.id, rma_id="RMA-1", action="ship_replacement", sku="MOUSE-NEW",
                              warehouse_id="WH-TPE", carrier="island", tracking_number="970000000001",
                              ship_to=ADDRESS, at=AT), *s.pending]
    again = Shipment.rehydrate(s.id, events)
    assert again.status is OD and len(again.tracking.updates) == 2 and again.version == 5


def test_carriers_tracking_numbers_are_stable_and_shaped() -> None:
    gx, island = CARRIERS["globex"], CARRIERS["island"]
    assert tracking_number(gx, "SH-1", outbound=True) == tracking_number(gx, "SH-1", outbound=True)
    assert tracking_number(gx, "SH-1", outbound=True).startswith("GX")
    assert tracking_number(gx, "RL-1", outbound=False).startswith("GR")
    n = tracking_number(island, "SH-1", outbound=True)
    assert len(n) == 12 and n.isdigit()
    assert tracking_number(island, "RL-1", outbound=False).startswith("9")
    assert carrier_for("TW") is island and carrier_for("JP") is gx


def test_service_levels_and_their_eta_skip_sundays() -> None:
    island = carrier("island")
    assert service_level(island, None) == "standard"
    with pytest.raises(RuleViolation):
        service_level(island, "overnight")
    with pytest.raises(RuleViolation):
        carrier("pigeon")
    friday = datetime(2026, 3, 6, 15, 0, tzinfo=LOCAL_TZ)
    assert service_level_eta(island, "standard", friday) == datetime(2026, 3, 9, 18, 0, tzinfo=LOCAL_TZ)  # Mon
    assert service_level_eta(island, "express", friday) == datetime(2026, 3, 7, 18, 0, tzinfo=LOCAL_TZ)  # Sat
    assert service_level_eta(carrier("globex"), "express", friday) == datetime(2026, 3, 10, 18, 0, tzinfo=LOCAL_TZ)
