"""The two carrier formats normalised (seed 001, case 9): Globex Express's JSON webhook (event codes,
ISO times with offsets) and 島嶼物流's CSV/JSON (Chinese 貨態, Asia/Taipei local times, ROC years);
stable dedupe keys so that a redelivered or out-of-order event is recognised; a bad event refuses the
payload naming each field."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from services.shipping.domain.carrier_formats import (
    GLOBEX_CODES,
    CarrierPayloadInvalid,
    detect_carrier,
    island_status,
    parse,
    parse_local_time,
)
from services.shipping.domain.carriers import LOCAL_TZ
from services.shipping.domain.events import TrackingStatus

IT, OD, DL, EX, RS = (TrackingStatus.IN_TRANSIT, TrackingStatus.OUT_FOR_DELIVERY, TrackingStatus.DELIVERED,
                      TrackingStatus.EXCEPTION, TrackingStatus.RETURNED_TO_SENDER)


def globex(*events: dict, number: str = "GX1234567890TW", eta: str | None = None) -> bytes:
    shipment: dict = {"trackingNumber": number, "events": list(events)}
    if eta:
        shipment["estimatedDeliveryDate"] = eta
    return json.dumps({"webhookId": "whk_1", "shipments": [shipment]}).encode()


def ev(code: str, ts: str, event_id: str | None = None, **extra: object) -> dict:
    out: dict = {"eventCode": code, "timestamp": ts, "description": f"code {code}", **extra}
    if event_id:
        out["eventId"] = event_id
    return out


def problems(exc: pytest.ExceptionInfo[CarrierPayloadInvalid]) -> dict[str, str]:
    return dict(exc.value.problems)


# --- globex --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "status"), [("PU", IT), ("IT", IT), ("AF", IT), ("OD", OD), ("WC", OD),
                                              ("DL", DL), ("OK", DL), ("EX", EX), ("NH", EX), ("RS", RS),
                                              ("RT", RS)])
def test_globex_codes_normalise(code: str, status: TrackingStatus) -> None:
    [u] = parse("globex", globex(ev(code, "2026-03-02T10:15:00+08:00", "e1")))
    assert u.status is status and u.carrier_status == code and GLOBEX_CODES[code] is status


def test_globex_event_fields_times_locations_and_eta() -> None:
    body = globex(ev("PU", "2026-03-02T10:15:00+08:00", "e1", location={"city": "Taipei", "countryCode": "TW",
                                                                        "facility": "TPE Gateway"}),
                  ev("DF", "2026-03-02T03:00:00Z", "e2", location="Hong Kong Hub"),
                  number="gx1234567890tw", eta="2026-03-04T18:00:00+08:00")
    first, second = parse("globex", body)
    assert first.tracking_number == "GX1234567890TW"  # upper-cased
    assert first.occurred_at.isoformat() == "2026-03-02T10:15:00+08:00"
    assert first.location == "TPE Gateway, Taipei, TW" and second.location == "Hong Kong Hub"
    assert first.eta is not None and first.eta.isoformat() == "2026-03-04T18:00:00+08:00"
    assert first.event_key == "id:e1" and first.original["eventCode"] == "PU"


def test_globex_without_event_ids_dedupes_by_content() -> None:
    a = parse("globex", globex(ev("IT", "2026-03-02T10:15:00+08:00")))
    b = parse("globex", globex(ev("IT", "2026-03-02T02:15:00Z")))  # the same moment, another offset
    c = parse("globex", globex(ev("IT", "2026-03-02T10:16:00+08:00")))
    assert a[0].event_key.startswith("sha256:")
    assert a[0].event_key == b[0].event_key != c[0].event_key


def test_globex_bad_events_are_each_named() -> None:
    with pytest.raises(CarrierPayloadInvalid) as exc:
        parse("globex", globex(ev("ZZ", "2026-03-02T10:15:00+08:00"), ev("DL", "2026-03-02 10:15"),
                               {"timestamp": "2026-03-02T10:15:00+08:00"}, number="bad number!"))
    p = problems(exc)
    assert "shipments[0].trackingNumber" in p
    assert "not a Globex event code" in p["shipments[0].events[0].eventCode"]
    assert "no UTC offset" in p["shipments[0].events[1].timestamp"]
    assert "shipments[0].events[2].eventCode" in p


@pytest.mark.parametrize(("body", "field"), [(b"not json", "body"), (b"{}", "shipments"),
                                             (b'{"shipments": [{"trackingNumber": "GX1"}]}', "shipments[0].events")])
def test_globex_malformed_payloads(body: bytes, field: str) -> None:
    with pytest.raises(CarrierPayloadInvalid) as exc:
        parse("globex", body)
    assert field in problems(exc)


# --- island --------------------------------------------------------------------------------------

CSV = """BillNo,StatusName,StatusTime,StationName,SerialNo,Memo
123456789012,已取件,2026/03/02 10:15,台北營業所,1,
123456789012,配送中,115/03/03 08:40,新竹營業所,2,司機 王先生
123456789012,已送達,2026-03-03 14:40:05,新竹營業所,3,
"""


def test_island_csv_with_chinese_statuses_local_times_and_roc_years() -> None:
    picked, out, done = parse("island", CSV.encode("utf-8-sig"), "text/csv")
    assert [u.status for u in (picked, out, done)] == [IT, OD, DL]
    assert picked.occurred_at == datetime(2026, 3, 2, 10, 15, tzinfo=LOCAL_TZ)
    assert out.occurred_at == datetime(2026, 3, 3, 8, 40, tzinfo=LOCAL_TZ)  # 民國 115 = 2026
    assert done.occurred_at.second == 5
    assert out.carrier_status == "配送中" and out.description == "司機 王先生" and out.location == "新竹營業所"
    assert picked.event_key == "seq:123456789012:1"


def test_island_chinese_headers_and_json_shapes_give_the_same_events() -> None:
    chinese = CSV.replace("BillNo,StatusName,StatusTime,StationName,SerialNo,Memo",
                          "託運單號,貨態,貨態時間,營業所,序號,備註")
    rows = [{"BillNo": "123456789012", "StatusName": "已取件", "StatusTime": "2026/03/02 10:15",
             "StationName": "台北營業所", "SerialNo": 1},
            {"BillNo": "123456789012", "StatusName": "配送中", "StatusTime": "115/03/03 08:40",
             "StationName": "新竹營業所", "SerialNo": "2", "Memo": "司機 王先生"},
            {"BillNo": "123456789012", "StatusName": "已送達", "StatusTime": "2026-03-03 14:40:05",
             "StationName": "新竹營業所", "SerialNo": 3}]
    keys = [[(u.event_key, u.status, u.occurred_at) for u in parse("island", body, ctype)]
            for body, ctype in [(CSV.encode(), "text/csv"), (chinese.encode(), None),
                                (json.dumps({"Data": rows}).encode(), "application/json"),
                                (json.dumps(rows).encode(), None)]]
    assert keys[0] == keys[1] == keys[2] == keys[3]
    [single] = parse("island", json.dumps(rows[0]).encode())
    assert single.event_key == keys[0][0][0]


@pytest.mark.parametrize(("text", "status"), [("已取件", IT), ("轉運中", IT), ("配送中", OD), ("已送達", DL),
                                              ("順利送達", DL), ("異常", EX), ("配送異常-公司行號休息", EX),
                                              ("拒收", EX), ("退回", RS), ("已退回寄件人", RS), (" 配送中 ", OD)])
def test_island_status_texts(text: str, status: TrackingStatus) -> None:
    assert island_status(text) is status


def test_island_without_serial_dedupes_by_content() -> None:
    body = "BillNo,StatusName,StatusTime,StationName\n123456789012,轉運中,2026/03/02 12:00,桃園轉運中心\n"
    [a] = parse("island", body.encode())
    [b] = parse("island", body.encode())
    assert a.event_key == b.event_key and a.event_key.startswith("sha256:")


def test_island_bad_rows_are_named_by_line_and_field() -> None:
    body = ("BillNo,StatusName,StatusTime,StationName,SerialNo\n"
            "123456789012,已取件,2026/03/02 10:15,台北,1\n"
            "123456789012,飛走了,2026/03/02 11:00,台北,2\n"
            "123456789012,配送中,昨天,台北,x\n")
    with pytest.raises(CarrierPayloadInvalid) as exc:
        parse("island", body.encode())
    p = problems(exc)
    assert "not a known 貨態" in p["line 3.StatusName"]
    assert "line 4.StatusTime" in p and "line 4.SerialNo" in p
    assert not any(k.startswith("line 2") for k in p)


@pytest.mark.parametrize(("body", "field"), [("BillNo,StatusName\n1,已取件\n", "StatusTime"),
                                             ("BillNo,StatusName,StatusTime\n", "body"),
                                             ('{"Data": []}', "Data")])
def test_island_unusable_files(body: str, field: str) -> None:
    with pytest.raises(CarrierPayloadInvalid) as exc:
        parse("island", body.encode())
    assert field in problems(exc)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026/03/02 10:15", datetime(2026, 3, 2, 10, 15, tzinfo=LOCAL_TZ)),
    ("115/3/2 9:05:07", datetime(2026, 3, 2, 9, 5, 7, tzinfo=LOCAL_TZ)),
    ("2026-03-02T10:15:00+00:00", datetime.fromisoformat("2026-03-02T10:15:00+00:00")),
    ("2026/02/30 10:00", None), ("tomorrow", None)])
def test_local_times(text: str, expected: datetime | None) -> None:
    assert parse_local_time(text) == expected


def test_detect_carrier_by_shape() -> None:
    assert detect_carrier(globex(ev("PU", "2026-03-02T10:15:00+08:00"))) == "globex"
    assert detect_carrier(CSV.encode()) == "island"
    assert detect_carrier(b'{"Data": [{"BillNo": "1"}]}') == "island"
    assert detect_carrier(b'{"foo": 1}') is None


def test_unknown_carrier() -> None:
    with pytest.raises(CarrierPayloadInvalid) as exc:
        parse("pigeon", b"{}")
    assert "carrier" in problems(exc)


def test_values_the_model_refuses_are_named_not_crashes() -> None:
    body = "BillNo,StatusName,StatusTime,SerialNo\n123456789012,已取件,2026/03/02 10:15,12345678901234567890\n"
    with pytest.raises(CarrierPayloadInvalid) as exc:
        parse("island", body.encode())
    assert "line 2.SerialNo" in problems(exc)
    long_id = "x" * 101
    with pytest.raises(CarrierPayloadInvalid) as exc2:
        parse("globex", globex(ev("PU", "2026-03-02T10:15:00+08:00", long_id)))
    assert "shipments[0].events[0].eventId" in problems(exc2)
