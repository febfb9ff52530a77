"""The two carriers' tracking formats, normalised to CarrierTrackingUpdate. Pure: bytes in, updates out.

Both arrive over HTTP (`POST /carriers/{carrier}/events`) and on the `carrier.tracking` Kafka
topic (header `carrier: globex|island`; without it the shape tells). A payload with any bad
event is refused whole (HTTP 422 naming each field, a dead letter on Kafka): the carrier resends
it fixed, and nothing half-applied stays behind.

## globex — Globex Express (international express), JSON webhook

    {"webhookId": "whk_8a1f",                       # optional
     "shipments": [{
        "trackingNumber": "GX1234567890TW",
        "estimatedDeliveryDate": "2026-03-04T18:00:00+08:00",   # optional, for every event below
        "events": [{
           "eventId": "ev-77120",                   # optional; the dedupe key when present
           "eventCode": "PU",                       # see GLOBEX_CODES
           "description": "Shipment picked up",     # optional
           "timestamp": "2026-03-02T10:15:00+08:00",   # ISO 8601 with its UTC offset (required)
           "location": {"city": "Taipei", "countryCode": "TW", "facility": "TPE Gateway"},  # or a string
           "estimatedDeliveryDate": "..."           # optional, overrides the shipment's
        }]}]}

## island — 島嶼物流 (local Taiwanese carrier), CSV or JSON, Chinese status text, local time

CSV (UTF-8, a BOM is fine), header `BillNo,StatusName,StatusTime,StationName,SerialNo,Memo` or the
carrier's Chinese headers `託運單號,貨態,貨態時間,營業所,序號,備註`:

    BillNo,StatusName,StatusTime,StationName,SerialNo,Memo
    123456789012,已取件,2026/03/02 10:15,台北營業所,1,
    123456789012,配送中,115/03/03 08:40,新竹營業所,2,        # ROC year 115 = 2026

JSON: the same fields, as `{"Data": [{...}, ...]}`, a list, or one object. `StatusTime` is
Asia/Taipei local time (`YYYY/MM/DD HH:MM[:SS]`, `-` separators too, ROC years below 1911
accepted) or ISO 8601 with an offset. Dedupe key: `BillNo` + `SerialNo` when given, else a hash
of the content. Status texts: see ISLAND_STATUS (exact), then ISLAND_KEYWORDS (contained).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from libs.domain.errors import DomainError
from libs.domain.json_input import loads_checked
from services.shipping.domain.carriers import LOCAL_TZ
from services.shipping.domain.events import CarrierTrackingUpdate, TrackingStatus

IT, OD, DL, EX, RS = (TrackingStatus.IN_TRANSIT, TrackingStatus.OUT_FOR_DELIVERY, TrackingStatus.DELIVERED,
                      TrackingStatus.EXCEPTION, TrackingStatus.RETURNED_TO_SENDER)

GLOBEX_CODES: dict[str, TrackingStatus] = {
    "PU": IT,  # picked up
    "AF": IT,  # arrived at a facility
    "DF": IT,  # departed a facility
    "IT": IT,  # in transit
    "CC": IT,  # customs cleared
    "AR": IT,  # arrived at the delivery station
    "OD": OD,  # out for delivery
    "WC": OD,  # with courier
    "DL": DL,  # delivered
    "OK": DL,  # delivered, signed for
    "EX": EX,  # exception
    "NH": EX,  # not home, delivery attempted
    "CA": EX,  # address problem
    "CD": EX,  # customs delay
    "RS": RS,  # returned to shipper
    "RT": RS,  # return completed
}

ISLAND_STATUS: dict[str, TrackingStatus] = {
    "已取件": IT, "已集貨": IT, "已收件": IT, "集貨完成": IT, "轉運中": IT, "運送中": IT, "到著": IT,
    "已到達營業所": IT, "抵達營業所": IT, "轉運中心處理中": IT,
    "配送中": OD, "派送中": OD, "配達中": OD,
    "已送達": DL, "順利送達": DL, "已配達": DL, "已簽收": DL, "配達完成": DL,
    "異常": EX, "配送異常": EX, "地址錯誤": EX, "無人在家": EX, "拒收": EX, "調查處理中": EX, "延遲配送": EX,
    "退回": RS, "已退回": RS, "退貨": RS, "退回寄件人": RS, "已退回寄件人": RS,
}
# Checked in this order when the text is not one of the above (e.g. "配送異常-公司行號休息").
ISLAND_KEYWORDS: tuple[tuple[str, TrackingStatus], ...] = (
    ("退回", RS), ("異常", EX), ("拒收", EX), ("送達", DL), ("簽收", DL), ("配送中", OD), ("取件", IT), ("轉運", IT),
)
ISLAND_HEADERS = {"託運單號": "BillNo", "貨態": "StatusName", "狀態": "StatusName", "貨態時間": "StatusTime",
                  "時間": "StatusTime", "營業所": "StationName", "序號": "SerialNo", "備註": "Memo"}
ISLAND_REQUIRED = ("BillNo", "StatusName", "StatusTime")

MAX_EVENTS = 1000
MAX_ORIGINAL_CHARS = 4000
_TRACKING = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_EVENT_ID = re.compile(r"^[\x21-\x7e]{1,100}$")
_LOCAL_TIME = re.compile(r"^(\d{2,4})[/-](\d{1,2})[/-](\d{1,2})[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?$")


class CarrierPayloadInvalid(DomainError):
    """A carrier payload that cannot be used; `problems` names every bad field (HTTP 422)."""

    code = "invalid_carrier_payload"

    def __init__(self, carrier: str, problems: list[tuple[str, str]]) -> None:
        summary = "; ".join(f"{f}: {r}" for f, r in problems[:5])
        super().__init__(f"{carrier} tracking payload refused: {summary}", carrier=carrier,
                         fields=[{"field": f, "rule": r} for f, r in problems])
        self.problems = problems


class _Problems:
    def __init__(self, carrier: str) -> None:
        self.carrier = carrier
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, rule: str) -> None:
        if len(self.items) < 100:
            self.items.append((field, rule))

    def raise_any(self) -> None:
        if self.items:
            raise CarrierPayloadInvalid(self.carrier, self.items)


def parse(carrier: str, body: bytes | str, content_type: str | None = None) -> list[CarrierTrackingUpdate]:
    """The normalised updates of one payload of `carrier` (raises CarrierPayloadInvalid)."""
    parsers: dict[str, Callable[[bytes | str, str | None], list[CarrierTrackingUpdate]]] = {
        "globex": parse_globex, "island": parse_island}
    if carrier not in parsers:
        raise CarrierPayloadInvalid(carrier, [("carrier", f"unknown carrier; known: {', '.join(sorted(parsers))}")])
    return parsers[carrier](body, content_type)


def _loads(text: str, carrier: str) -> Any:
    """The JSON document of a carrier payload, refused when it is not JSON or holds what the store cannot keep."""
    try:
        doc, bad = loads_checked(text)
    except ValueError as exc:
        raise CarrierPayloadInvalid(carrier, [("body", f"is not JSON: {exc}")]) from None
    if bad is not None:
        raise CarrierPayloadInvalid(carrier, [bad])
    return doc


def detect_carrier(body: bytes | str) -> str | None:
    """The carrier a Kafka message without a `carrier` header comes from, by its shape."""
    try:
        doc = json.loads(body)
    except RecursionError:
        return None
    except ValueError:
        text = body.decode("utf-8-sig", "replace") if isinstance(body, bytes) else body
        first = text.lstrip().split("\n", 1)[0]
        return "island" if "BillNo" in first or "託運單號" in first else None
    if isinstance(doc, dict) and "shipments" in doc:
        return "globex"
    items = doc.get("Data") if isinstance(doc, dict) and "Data" in doc else doc
    if isinstance(items, dict):
        items = [items]
    if isinstance(items, list) and items and isinstance(items[0], dict) and "BillNo" in items[0]:
        return "island"
    return None


def _text(body: bytes | str, carrier: str) -> str:
    if isinstance(body, str):
        return body
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CarrierPayloadInvalid(carrier, [("body", "must be UTF-8")]) from None


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _content_hash(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def _append(out: list[CarrierTrackingUpdate], problems: _Problems, where: str, **fields: Any) -> None:
    """Build one update; whatever the model still refuses is the event's problem, not a crash."""
    try:
        out.append(CarrierTrackingUpdate(**fields))
    except ValidationError as exc:
        for err in exc.errors():
            problems.add(".".join([where, *(str(p) for p in err.get("loc", ()))]), err.get("msg", "invalid"))


def _original(item: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    out = {**extra, **item}
    if len(json.dumps(out, ensure_ascii=False, default=str)) > MAX_ORIGINAL_CHARS:
        return {**extra, "truncated": True}
    return out


def _tracking(value: Any, field: str, problems: _Problems) -> str | None:
    if not isinstance(value, str | int) or isinstance(value, bool):
        problems.add(field, "is required: the tracking number, a string")
        return None
    tn = str(value).strip().upper()
    if not _TRACKING.match(tn):
        problems.add(field, "must be 1-64 of A-Z 0-9 -")
        return None
    return tn


def _iso_with_offset(value: Any, field: str, problems: _Problems, *, required: bool = True) -> datetime | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        problems.add(field, "is required: an ISO 8601 time with its UTC offset" if value is None
                     else "must be an ISO 8601 string")
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        problems.add(field, f"{value!r} is not an ISO 8601 time")
        return None
    if moment.tzinfo is None:
        problems.add(field, f"{value!r} has no UTC offset (e.g. +08:00)")
        return None
    return moment


# --- globex ----------------------------------------------------------------------------------


def parse_globex(body: bytes | str, content_type: str | None = None) -> list[CarrierTrackingUpdate]:
    problems = _Problems("globex")
    doc = _loads(_text(body, "globex"), "globex")
    if not isinstance(doc, dict) or not isinstance(doc.get("shipments"), list) or not doc["shipments"]:
        raise CarrierPayloadInvalid("globex", [("shipments", "is required: a non-empty array of shipments")])
    out: list[CarrierTrackingUpdate] = []
    for i, shipment in enumerate(doc["shipments"]):
        where = f"shipments[{i}]"
        if not isinstance(shipment, dict):
            problems.add(where, "must be an object")
            continue
        tn = _tracking(shipment.get("trackingNumber"), f"{where}.trackingNumber", problems)
        shipment_eta = _iso_with_offset(shipment.get("estimatedDeliveryDate"), f"{where}.estimatedDeliveryDate",
                                        problems, required=False)
        events = shipment.get("events")
        if not isinstance(events, list) or not events:
            problems.add(f"{where}.events", "is required: a non-empty array of tracking events")
            continue
        for j, ev in enumerate(events):
            at = f"{where}.events[{j}]"
            if not isinstance(ev, dict):
                problems.add(at, "must be an object")
                continue
            code = ev.get("eventCode")
            status = GLOBEX_CODES.get(code.strip().upper()) if isinstance(code, str) else None
            if status is None:
                problems.add(f"{at}.eventCode", f"{code!r} is not a Globex event code; known: "
                                                f"{', '.join(GLOBEX_CODES)}")
            occurred = _iso_with_offset(ev.get("timestamp"), f"{at}.timestamp", problems)
            eta = _iso_with_offset(ev.get("estimatedDeliveryDate"), f"{at}.estimatedDeliveryDate", problems,
                                   required=False) or shipment_eta
            event_id = ev.get("eventId")
            if event_id is not None and (not isinstance(event_id, str) or not _EVENT_ID.match(event_id)):
                problems.add(f"{at}.eventId", "must be 1-100 printable ASCII characters")
                continue
            location = _globex_location(ev.get("location"), f"{at}.location", problems)
            description = ev.get("description") or ""
            if not isinstance(description, str):
                problems.add(f"{at}.description", "must be a string")
                continue
            if tn is None or status is None or occurred is None:
                continue
            assert isinstance(code, str)
            key = f"id:{event_id}" if event_id else _content_hash(tn, code.strip().upper(), _utc(occurred), location)
            _append(out, problems, at, carrier="globex", event_key=key, tracking_number=tn, status=status,
                    carrier_status=code.strip().upper(), description=description[:300], location=location[:200],
                    occurred_at=occurred, eta=eta, original=_original(ev, trackingNumber=tn))
    problems.raise_any()
    if len(out) > MAX_EVENTS:
        raise CarrierPayloadInvalid("globex", [("shipments", f"at most {MAX_EVENTS} events per payload")])
    return out


def _globex_location(value: Any, field: str, problems: _Problems) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        parts = [value.get("facility"), value.get("city"), value.get("countryCode")]
        return ", ".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip())
    problems.add(field, "must be a string or an object with facility, city, countryCode")
    return ""


# --- island ----------------------------------------------------------------------------------


def island_status(text: str) -> TrackingStatus | None:
    """The normalised status of an island status text (exact, then by keyword), or None."""
    t = unicodedata.normalize("NFKC", text).strip().replace(" ", "")
    if t in ISLAND_STATUS:
        return ISLAND_STATUS[t]
    for word, status in ISLAND_KEYWORDS:
        if word in t:
            return status
    return None


def parse_local_time(value: str) -> datetime | None:
    """An island time: Asia/Taipei local time (ROC years accepted) or ISO 8601 with an offset."""
    v = unicodedata.normalize("NFKC", value).strip()
    m = _LOCAL_TIME.match(v)
    if m:
        year, month, day, hour, minute = (int(g) for g in m.groups()[:5])
        second = int(m.group(6) or 0)
        if year < 1911:  # 民國 (ROC) year
            year += 1911
        try:
            return datetime(year, month, day, hour, minute, second, tzinfo=LOCAL_TZ)
        except ValueError:
            return None
    try:
        moment = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=LOCAL_TZ)


def parse_island(body: bytes | str, content_type: str | None = None) -> list[CarrierTrackingUpdate]:
    text = _text(body, "island")
    kind = (content_type or "").split(";")[0].strip().lower()
    stripped = text.lstrip()
    if kind in ("application/json", "text/json") or (kind not in ("text/csv", "application/csv")
                                                      and stripped[:1] in ("{", "[")):
        items, label = _island_json(text)
    else:
        items, label = _island_csv(text)
    problems = _Problems("island")
    out: list[CarrierTrackingUpdate] = []
    for where, item in zip(label, items, strict=True):
        tn = _tracking(item.get("BillNo"), f"{where}.BillNo", problems)
        status_text = item.get("StatusName")
        status = island_status(status_text) if isinstance(status_text, str) and status_text.strip() else None
        if status is None:
            problems.add(f"{where}.StatusName", f"{status_text!r} is not a known 貨態 (e.g. 已取件, 配送中, 已送達, "
                                                "異常, 退回)" if status_text else "is required: the 貨態 text")
        raw_time = item.get("StatusTime")
        occurred = parse_local_time(raw_time) if isinstance(raw_time, str) and raw_time.strip() else None
        if occurred is None:
            problems.add(f"{where}.StatusTime", f"{raw_time!r} is not a time like 2026/03/02 10:15 (Asia/Taipei)"
                         if raw_time else "is required: the time of the 貨態")
        serial = item.get("SerialNo")
        serial_text = str(serial).strip() if serial not in (None, "") else ""
        if serial_text and not (serial_text.isdigit() and len(serial_text) <= 9):
            problems.add(f"{where}.SerialNo", f"{serial!r} must be a whole number of at most 9 digits")
            serial_text = "bad"
        station = str(item.get("StationName") or "").strip()
        memo = str(item.get("Memo") or "").strip()
        if tn is None or status is None or occurred is None or serial_text == "bad":
            continue
        assert isinstance(status_text, str)
        key = (f"seq:{tn}:{int(serial_text)}" if serial_text
               else _content_hash(tn, status_text.strip(), _utc(occurred), station))
        _append(out, problems, where, carrier="island", event_key=key, tracking_number=tn, status=status,
                carrier_status=status_text.strip()[:100], description=(memo or status_text.strip())[:300],
                location=station[:200], occurred_at=occurred, original=_original(item))
    problems.raise_any()
    return out


def _island_json(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    doc = _loads(text, "island")
    prefix = "Data"
    if isinstance(doc, dict) and "Data" in doc:
        doc = doc["Data"]
    elif isinstance(doc, dict):
        doc, prefix = [doc], ""
    if not isinstance(doc, list) or not doc:
        raise CarrierPayloadInvalid("island", [("Data", "is required: a non-empty array of 貨態 records")])
    if len(doc) > MAX_EVENTS:
        raise CarrierPayloadInvalid("island", [("Data", f"at most {MAX_EVENTS} records per payload")])
    bad = [f"{prefix}[{i}]" for i, item in enumerate(doc) if not isinstance(item, dict)]
    if bad:
        raise CarrierPayloadInvalid("island", [(b, "must be an object") for b in bad])
    return doc, ([f"{prefix}[{i}]" for i in range(len(doc))] if prefix else ["record"])


def _island_csv(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    reader = csv.reader(io.StringIO(text))
    rows = [(reader.line_num, r) for r in reader]
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
    if not rows:
        raise CarrierPayloadInvalid("island", [("body", "is empty: a CSV header and at least one row are required")])
    header = [ISLAND_HEADERS.get(h.strip(), h.strip()) for h in rows[0][1]]
    missing = [c for c in ISLAND_REQUIRED if c not in header]
    if missing:
        raise CarrierPayloadInvalid("island", [(c, "is a required CSV column") for c in missing])
    data = rows[1:]
    if not data:
        raise CarrierPayloadInvalid("island", [("body", "has a header but no rows")])
    if len(data) > MAX_EVENTS:
        raise CarrierPayloadInvalid("island", [("body", f"at most {MAX_EVENTS} rows per payload")])
    items = [{h: (r[k] if k < len(r) else "") for k, h in enumerate(header) if h} for _, r in data]
    return items, [f"line {n}" for n, _ in data]
