"""Carrier manifests (the parcels a carrier picked up, as its daily export or a warehouse's) parsed into
rows for the duplicate detector (duplicates.py), and the CarrierManifest aggregate
(`carrier_manifest-{manifest_id}`). Parsing is pure: bytes in, rows and errors out.

## Format (CSV or JSON)

CSV, UTF-8 (a BOM is fine), one header line, then one parcel per line:

| column | required | meaning |
|---|---|---|
| `tracking_number` | yes | the carrier's tracking number (A-Z 0-9 -) |
| `shipped_at` | yes | ISO 8601 with an offset, or Asia/Taipei local `YYYY-MM-DD HH:MM[:SS]` (`/` too) |
| `rma_id` / `order_id` | one of them per row | what the parcel was for (the header needs at least one) |
| `action` | yes | what it did, e.g. `ship_replacement` (a lower-case code) |
| `carrier` | unless `?carrier=` names the manifest's | `globex` or `island` |
| `sku`, `warehouse_id`, `recipient_name`, `reference` | no | what, from where, to whom, the shipper's reference |

JSON: `{"carrier": "island", "source": "wms-daily", "rows": [{...same fields...}]}` or a bare list.

Every bad row is reported with its line (CSV: the physical line, the header being line 1; JSON:
the row's index + 1), the field and the rule; the good rows are imported regardless. A problem
with the whole file (not UTF-8, not CSV/JSON, a missing column, no row at all) refuses the file
and stores nothing. The manifest's id is a hash of its bytes and default carrier, so the same
file imported again is the same manifest, and changes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from libs.domain.aggregate import Aggregate
from libs.domain.errors import DomainError
from libs.domain.events import DomainEvent
from services.shipping.domain.carrier_formats import parse_local_time
from services.shipping.domain.carriers import CARRIERS
from services.shipping.domain.events import (
    MANIFEST_CATEGORY,
    CarrierManifestImported,
    ManifestRowError,
    ManifestShipmentRow,
)

REQUIRED_COLUMNS = ("tracking_number", "shipped_at", "action")
SUBJECT_COLUMNS = ("rma_id", "order_id")
OPTIONAL_COLUMNS = ("carrier", "sku", "warehouse_id", "recipient_name", "reference")
KNOWN_COLUMNS = frozenset((*REQUIRED_COLUMNS, *SUBJECT_COLUMNS, *OPTIONAL_COLUMNS))
MAX_ROWS = 5000
_CODE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_TRACKING = re.compile(r"^[A-Za-z0-9-]{1,64}$")
Format = Literal["csv", "json"]


class ManifestInvalid(DomainError):
    """The file as a whole cannot be read (HTTP 422); `fields` names each problem."""

    code = "invalid_manifest"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("manifest refused: " + "; ".join(f"{f}: {r}" for f, r in problems[:5]),
                         fields=[{"field": f, "rule": r} for f, r in problems])


@dataclass(frozen=True)
class ParsedManifest:
    format: Format
    file_sha256: str
    manifest_id: str
    carrier: str | None
    source_name: str
    rows: list[ManifestShipmentRow] = field(default_factory=list)
    errors: list[ManifestRowError] = field(default_factory=list)

    @property
    def rejected_lines(self) -> list[int]:
        return sorted({e.line for e in self.errors if e.line is not None})


def manifest_id_for(body: bytes, carrier: str | None) -> str:
    return "MF-" + hashlib.sha256((carrier or "").encode() + b"\n" + body).hexdigest()[:24].upper()


def detect_format(body: bytes, content_type: str | None) -> Format:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("application/json", "text/json"):
        return "json"
    if kind in ("text/csv", "application/csv", "text/comma-separated-values", "application/vnd.ms-excel"):
        return "csv"
    if kind not in ("", "text/plain", "application/octet-stream"):
        raise ManifestInvalid([("Content-Type", f"{kind} is neither text/csv nor application/json")])
    return "json" if body.lstrip()[:1] in (b"{", b"[") else "csv"


def parse_manifest(body: bytes, content_type: str | None, carrier: str | None = None,
                   source_name: str = "") -> ParsedManifest:
    """The rows and the bad rows of one manifest; ManifestInvalid for a file that cannot be read."""
    if carrier is not None and carrier not in CARRIERS:
        raise ManifestInvalid([("carrier", f"unknown carrier {carrier!r}; known: {', '.join(sorted(CARRIERS))}")])
    fmt = detect_format(body, content_type)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestInvalid([("body", "must be UTF-8")]) from None
    if fmt == "json":
        items, carrier, source_name = _json_items(text, carrier, source_name)
    else:
        items = _csv_items(text, carrier)
    if len(items) > MAX_ROWS:
        raise ManifestInvalid([("body", f"at most {MAX_ROWS} rows per manifest, found {len(items)}")])
    rows: list[ManifestShipmentRow] = []
    errors: list[ManifestRowError] = []
    for line, item in items:
        row, problems = parse_row(line, item, carrier)
        if row is not None:
            rows.append(row)
        errors.extend(ManifestRowError(line=line, field=f, rule=r) for f, r in problems)
    return ParsedManifest(fmt, hashlib.sha256(body).hexdigest(), manifest_id_for(body, carrier), carrier,
                          source_name[:255], rows, errors)


Items = list[tuple[int, dict[str, Any]]]


def _json_items(text: str, carrier: str | None, source: str) -> tuple[Items, str | None, str]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ManifestInvalid([("body", f"is not JSON: {exc}")]) from None
    if isinstance(doc, dict):
        file_carrier = doc.get("carrier")
        if file_carrier is not None and file_carrier not in CARRIERS:
            raise ManifestInvalid([("carrier", f"unknown carrier {file_carrier!r}")])
        carrier = carrier or file_carrier
        source = source or str(doc.get("source") or "")
        doc = doc.get("rows")
    if not isinstance(doc, list) or not doc:
        raise ManifestInvalid([("rows", "is required: a non-empty array of parcels")])
    return [(i + 1, item if isinstance(item, dict) else {"__not_an_object__": True}) for i, item in enumerate(doc)], \
        carrier, source


def _csv_items(text: str, carrier: str | None) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, list[str]]] = []
    try:
        for r in reader:
            rows.append((reader.line_num, r))
    except csv.Error as exc:
        raise ManifestInvalid([("body", f"is not valid CSV at line {reader.line_num}: {exc}")]) from None
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ManifestInvalid([("body", "is empty: a header and at least one row are required")])
    header = [h.strip().lower() for h in rows[0][1]]
    problems = [(c, "is a required column") for c in REQUIRED_COLUMNS if c not in header]
    if not any(c in header for c in SUBJECT_COLUMNS):
        problems.append(("rma_id", "a column rma_id or order_id is required"))
    if carrier is None and "carrier" not in header:
        problems.append(("carrier", "is a required column unless ?carrier= names the manifest's carrier"))
    if problems:
        raise ManifestInvalid(problems)
    if len(rows) == 1:
        raise ManifestInvalid([("body", "has a header but no rows")])
    return [(n, {h: (r[k].strip() if k < len(r) else "") for k, h in enumerate(header) if h in KNOWN_COLUMNS})
            for n, r in rows[1:]]


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def parse_row(line: int, item: dict[str, Any], carrier: str | None) -> tuple[ManifestShipmentRow | None,
                                                                              list[tuple[str, str]]]:
    """One row: the parsed row, or None and its problems (field, rule)."""
    if item.get("__not_an_object__"):
        return None, [("row", "must be an object")]
    problems: list[tuple[str, str]] = []
    values: dict[str, Any] = {k: (v.strip() if isinstance(v, str) else v) for k, v in item.items()
                              if k in KNOWN_COLUMNS and not _blank(v)}
    values.setdefault("carrier", carrier)
    if values.get("carrier") is None:
        problems.append(("carrier", "is required (a column, or ?carrier= for the whole manifest)"))
    elif values["carrier"] not in CARRIERS:
        problems.append(("carrier", f"unknown carrier {values['carrier']!r}; known: {', '.join(sorted(CARRIERS))}"))
    number = values.get("tracking_number")
    if isinstance(number, str):
        values["tracking_number"] = number.upper()
        if not _TRACKING.match(number):
            problems.append(("tracking_number", f"{number!r} must be 1-64 of A-Z 0-9 -"))
    if ("rma_id" in values) == ("order_id" in values):
        problems.append(("rma_id", "exactly one of rma_id or order_id is required"))
    shipped = values.get("shipped_at")
    if shipped is None:
        problems.append(("shipped_at", "is required"))
    else:
        moment = parse_local_time(shipped) if isinstance(shipped, str) else None
        if moment is None:
            problems.append(("shipped_at", f"{shipped!r} is not ISO 8601 nor YYYY-MM-DD HH:MM (Asia/Taipei)"))
        else:
            values["shipped_at"] = moment
    action = values.get("action")
    if isinstance(action, str) and not _CODE.match(action):
        values["action"] = action.strip().lower()
    try:
        row = ManifestShipmentRow(line=line, **values)
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]) if err.get("loc") else "row"
            if not any(p[0] == name for p in problems):
                problems.append((name, "is required" if err["type"] == "missing" else err["msg"]))
        return None, problems
    if problems:
        return None, problems
    return row, []


class CarrierManifest(Aggregate):
    category = MANIFEST_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.imported: CarrierManifestImported | None = None

    @classmethod
    def record(cls, parsed: ParsedManifest, rows: list[ManifestShipmentRow], by: str,
               at: datetime) -> CarrierManifest:
        """The import: its rows with the detector's outcomes, and its bad rows."""
        m = cls(parsed.manifest_id)
        limit = CarrierManifestImported.MAX_ERRORS_IN_EVENT
        m._record(CarrierManifestImported(
            manifest_id=m.id, carrier=parsed.carrier, format=parsed.format, source_name=parsed.source_name,
            file_sha256=parsed.file_sha256, rows=rows, errors=parsed.errors[:limit], errors_total=len(parsed.errors),
            by=by, at=at))
        return m

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, CarrierManifestImported):
            self.imported = event
