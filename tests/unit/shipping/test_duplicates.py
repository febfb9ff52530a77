"""The duplicate-shipment detector's rules, table-driven, and the follow-up of a duplicate (seed 001,
case 15): return the extra unit (its label scanned in closes it), offset it against a later service,
let the customer pay, keep it as goodwill, or dismiss it; closed cases refuse further follow-ups (409)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.domain.errors import InvalidTransition, RuleViolation
from services.shipping.domain.duplicates import (
    DuplicateStatus,
    ShipmentDuplicate,
    classify_row,
    duplicate_id_for,
    duplicate_of_new_shipment,
    first_parcel,
)
from services.shipping.domain.events import (
    DuplicateShipmentDetected,
    ManifestRowOutcome,
    ShipmentDuplicateParcel,
    ShipmentDuplicateResolution,
    ShipmentParcelOrigin,
)
from services.shipping.domain.shipment import Subject

AT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
R = ShipmentDuplicateResolution
Out = ManifestRowOutcome


def ours(number: str = "970000000001") -> ShipmentDuplicateParcel:
    return ShipmentDuplicateParcel(origin=ShipmentParcelOrigin.CLOSELOOP, shipment_id="SH-1", carrier="island",
                                   tracking_number=number, shipped_at=AT)


def outside(number: str, hours: int = 0) -> ShipmentDuplicateParcel:
    return ShipmentDuplicateParcel(origin=ShipmentParcelOrigin.EXTERNAL, carrier="island", tracking_number=number,
                                   shipped_at=AT + timedelta(hours=hours), manifest_id="MF-1", line=2)


@pytest.mark.parametrize(("by_tracking", "for_subject", "outcome", "original"), [
    # 1. the manifest lists closeloop's own parcel: never a duplicate
    (ours(), [ours()], Out.CLOSELOOP_SHIPMENT, None),
    (ours(), [], Out.CLOSELOOP_SHIPMENT, None),
    # 2. seen in an earlier manifest: a re-import changes nothing
    (outside("1"), [ours(), outside("1")], Out.ALREADY_IMPORTED, None),
    # 3. another parcel for a (subject, action) that already has one: closeloop's first, else the earliest
    (None, [ours()], Out.DUPLICATE, ours()),
    (None, [outside("2", hours=5), ours()], Out.DUPLICATE, ours()),
    (None, [outside("3", hours=5), outside("2", hours=1)], Out.DUPLICATE, outside("2", hours=1)),
    # 4. the first parcel of its (subject, action), shipped outside closeloop
    (None, [], Out.EXTERNAL_SHIPMENT, None),
])
def test_detection_rules(by_tracking: ShipmentDuplicateParcel | None, for_subject: list[ShipmentDuplicateParcel],
                         outcome: ManifestRowOutcome, original: ShipmentDuplicateParcel | None) -> None:
    verdict = classify_row(by_tracking, for_subject)
    assert verdict.outcome is outcome and verdict.original == original


def test_a_new_closeloop_shipment_duplicates_a_parcel_shipped_outside() -> None:
    assert duplicate_of_new_shipment([]) is None
    assert duplicate_of_new_shipment([outside("2", 3), outside("1", 1)]) == outside("1", 1)
    assert first_parcel([]) is None


def test_the_duplicate_id_is_a_function_of_subject_action_and_extra_parcel() -> None:
    s = Subject("rma", "RMA-1")
    assert duplicate_id_for(s, "ship_replacement", "island", "1") == duplicate_id_for(s, "ship_replacement",
                                                                                      "island", "1")
    assert duplicate_id_for(s, "ship_replacement", "island", "1") != duplicate_id_for(s, "ship_replacement",
                                                                                      "island", "2")


def detected() -> ShipmentDuplicate:
    dup = ShipmentDuplicate.detect(Subject("rma", "RMA-1"), "ship_replacement", ours(), outside("2"), None, AT)
    [e] = dup.pending
    assert isinstance(e, DuplicateShipmentDetected) and e.rma_id == "RMA-1" and e.order_id is None
    dup.mark_saved()
    return dup


@pytest.mark.parametrize(("resolution", "status"), [
    (R.OFFSET_AGAINST_LATER_SERVICE, DuplicateStatus.RESOLVED), (R.CUSTOMER_PAYS, DuplicateStatus.RESOLVED),
    (R.GOODWILL_KEPT, DuplicateStatus.RESOLVED), (R.NOT_A_DUPLICATE, DuplicateStatus.DISMISSED)])
def test_closing_follow_ups(resolution: ShipmentDuplicateResolution, status: DuplicateStatus) -> None:
    dup = detected()
    dup.resolve(resolution, "agreed by phone", "ORD-next" if resolution is R.OFFSET_AGAINST_LATER_SERVICE else "",
                "cs-1", AT)
    assert dup.status is status and dup.resolution is resolution and dup.note == "agreed by phone"
    with pytest.raises(InvalidTransition) as exc:
        dup.resolve(R.GOODWILL_KEPT, "again", "", "cs-1", AT)
    assert exc.value.allowed == []


def test_return_requested_then_the_unit_comes_back() -> None:
    dup = detected()
    dup.request_return("RX-1", "please send the extra mouse back", "cs-1", AT)
    assert dup.status is DuplicateStatus.RETURN_REQUESTED and dup.label_id == "RX-1"
    assert set(dup.allowed()) == {"offset_against_later_service", "customer_pays", "goodwill_kept"}
    with pytest.raises(InvalidTransition):
        dup.request_return("RX-1", "twice", "cs-1", AT)
    assert dup.unit_returned("RX-1", "scanner-1", AT) is True
    assert dup.status is DuplicateStatus.RESOLVED and dup.resolution is R.UNIT_RETURNED
    assert dup.note == "please send the extra mouse back"
    assert dup.unit_returned("RX-1", "scanner-1", AT) is False  # already closed


def test_the_customer_never_sends_it_back_and_it_is_offset() -> None:
    dup = detected()
    dup.request_return("RX-1", "please", "cs-1", AT)
    dup.resolve(R.OFFSET_AGAINST_LATER_SERVICE, "offset on the next service", "ORD-9", "cs-1", AT)
    assert dup.status is DuplicateStatus.RESOLVED and dup.offset_reference == "ORD-9"
    assert dup.unit_returned("RX-1", "scanner", AT) is False


@pytest.mark.parametrize("resolution", [R.RETURN_REQUESTED, R.UNIT_RETURNED])
def test_resolve_takes_only_closing_resolutions(resolution: ShipmentDuplicateResolution) -> None:
    with pytest.raises(RuleViolation) as exc:
        detected().resolve(resolution, "x", "", "cs", AT)
    assert exc.value.field == "resolution"
