"""Carrier manifests (seed 001, case 15): CSV and JSON with the documented columns, bad rows reported by
line (the good ones kept), unreadable files refused whole, and the same file always the same manifest."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from services.shipping.domain.carriers import LOCAL_TZ
from services.shipping.domain.manifest import ManifestInvalid, manifest_id_for, parse_manifest

CSV = """tracking_number,shipped_at,rma_id,order_id,action,carrier,sku,warehouse_id,recipient_name,reference
123456789012,2026-03-02 09:30,RMA-1,,ship_replacement,island,MOUSE-NEW,WH-TPE,林小姐,PICK-1
GX1234567890TW,2026-03-02T10:00:00+08:00,,ORD-7,ship_order,globex,,,,
bad number!,2026-03-02 09:30,RMA-1,,ship_replacement,island,,,,
123456789013,yesterday,RMA-1,ORD-1,SHIP_REPLACEMENT,pigeon,,,,
"""


def test_csv_rows_and_bad_rows_by_line() -> None:
    m = parse_manifest(CSV.encode("utf-8-sig"), "text/csv")
    assert m.format == "csv" and [r.line for r in m.rows] == [2, 3]
    first, second = m.rows
    assert (first.carrier, first.tracking_number, first.rma_id, first.action, first.sku) == (
        "island", "123456789012", "RMA-1", "ship_replacement", "MOUSE-NEW")
    assert first.shipped_at == datetime(2026, 3, 2, 9, 30, tzinfo=LOCAL_TZ)
    assert first.recipient_name == "林小姐" and first.reference == "PICK-1"
    assert second.order_id == "ORD-7" and second.rma_id is None and second.sku is None
    assert m.rejected_lines == [4, 5]
    by_line: dict[int, set[str]] = {}
    for e in m.errors:
        assert e.line is not None
        by_line.setdefault(e.line, set()).add(e.field)
    assert by_line[4] == {"tracking_number"}
    assert by_line[5] == {"shipped_at", "rma_id", "carrier"}


def test_json_rows_are_numbered_from_one_and_take_the_manifests_carrier() -> None:
    doc = {"carrier": "island", "source": "wms-daily",
           "rows": [{"tracking_number": "123456789012", "shipped_at": "2026-03-02 09:30", "rma_id": "RMA-1",
                     "action": "ship_replacement"},
                    {"tracking_number": "123456789013", "shipped_at": "2026-03-02 09:30", "action": "x"},
                    "not an object"]}
    m = parse_manifest(json.dumps(doc).encode(), "application/json")
    assert m.format == "json" and m.carrier == "island" and m.source_name == "wms-daily"
    assert [(r.line, r.carrier) for r in m.rows] == [(1, "island")]
    assert {(e.line, e.field) for e in m.errors} == {(2, "rma_id"), (3, "row")}


def test_the_query_carrier_serves_rows_without_one() -> None:
    body = b"tracking_number,shipped_at,rma_id,action\n123456789012,2026-03-02 09:30,RMA-1,ship_replacement\n"
    assert parse_manifest(body, "text/csv", carrier="island").rows[0].carrier == "island"
    with pytest.raises(ManifestInvalid) as exc:
        parse_manifest(body, "text/csv")
    assert exc.value.details["fields"] == [{"field": "carrier", "rule": "is a required column unless ?carrier= "
                                                                        "names the manifest's carrier"}]


@pytest.mark.parametrize(("body", "ctype", "field"), [
    (b"", "text/csv", "body"), (b"tracking_number,shipped_at\n", "text/csv", "action"),
    (b"tracking_number,shipped_at,action,carrier\n1,2,x,island\n", "text/csv", "rma_id"),
    (b"\xff\xfe", "text/csv", "body"), (b"[]", "application/json", "rows"), (b"{", "application/json", "body"),
    (b"x", "application/pdf", "Content-Type"),
])
def test_unreadable_files_are_refused_whole(body: bytes, ctype: str, field: str) -> None:
    with pytest.raises(ManifestInvalid) as exc:
        parse_manifest(body, ctype, carrier="island")
    assert field in {f["field"] for f in exc.value.details["fields"]}  # type: ignore[attr-defined]


def test_the_same_file_is_the_same_manifest() -> None:
    a, b = parse_manifest(CSV.encode(), "text/csv"), parse_manifest(CSV.encode(), None)
    assert a.manifest_id == b.manifest_id == manifest_id_for(CSV.encode(), None)
    assert a.manifest_id != parse_manifest(CSV.encode(), "text/csv", carrier="island").manifest_id
    assert a.manifest_id != parse_manifest(CSV.encode() + b"\n123456789099,2026-03-02 09:30,RMA-9,,x,island,,,,\n",
                                           "text/csv").manifest_id
