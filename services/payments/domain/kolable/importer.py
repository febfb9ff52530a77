"""Parse Wade's orders/payments export (CSV or JSON) into validated rows. Pure: bytes in, rows out.

The format is documented in docs/kolable-import-format.md. The rules that matter:

- Every bad row is reported with its line (CSV: physical line, the header being line 1; JSON: array
  index + 1), the field and the reason; good rows are accepted regardless of bad ones.
- *Structural* problems reject the row: an order id, amount or currency that is missing or
  malformed, a value that is not of its type (a date that is not ISO 8601, an unknown status), or
  facts that contradict each other (a refund on an order that was never charged). A row that
  cannot be trusted is not half-used.
- *Missing* non-structural values (student_id, course_id, ordered_at, payment_status, paid_at,
  payment_ref, refunded_amount on a partial refund, refunded_at, disputed_at, line_thread) are
  accepted as None. The classifier turns them into `data_gap` with the missing fields named,
  because the seed wants the gaps on Wade's list (Wade 補匯出欄位), not a rejected file.
- Each row gets a fingerprint: SHA-256 of the canonical JSON of its normalised content (not of its
  line or of columns we ignore). Re-importing the same file yields the same fingerprints; the
  application records a row only when its fingerprint differs from the order's latest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation, localcontext
from functools import partial
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from libs.domain.money import CURRENCY_EXPONENTS, MAX_MINOR_UNITS, Money
from services.payments.domain.kolable.events import (
    ID_PATTERN,
    DisputeStatus,
    ImportRowError,
    KolableImportCompleted,
    KolableOrderRow,
    PaymentStatus,
)

__all__ = [
    "DEFAULT_TIMEZONE",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "ImportResult",
    "ImportedRow",
    "detect_format",
    "fingerprint",
    "parse_export",
    "parse_major_amount",
]

Format = Literal["csv", "json"]

# Kolable sells in Taiwan: a date without a time means midnight there.
DEFAULT_TIMEZONE = "Asia/Taipei"

# Each entry is one required column; a tuple means "one of these".
REQUIRED_COLUMNS: tuple[str | tuple[str, ...], ...] = (
    "order_id", "student_id", "course_id", ("amount", "amount_minor"), "currency", "ordered_at",
    "payment_status", "paid_at", "payment_ref", ("refunded_amount", "refunded_amount_minor"), "refunded_at",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("dispute_status", "disputed_at", "line_thread", "notes")
KNOWN_COLUMNS: frozenset[str] = frozenset(
    [c for entry in REQUIRED_COLUMNS for c in ((entry,) if isinstance(entry, str) else entry)] + list(OPTIONAL_COLUMNS))

MAX_TEXT = {"student_id": 128, "course_id": 128, "payment_ref": 255, "line_thread": 255, "notes": 2000}

_ID = re.compile(ID_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# 28000, 1200.5, 1,200.50 -- thousands separators only in groups of three.
_MAJOR = re.compile(r"^(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")
_MINOR = re.compile(r"^\d+$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

JSON_TYPES = ("application/json", "text/json")
CSV_TYPES = ("text/csv", "application/csv", "text/comma-separated-values", "application/vnd.ms-excel")
SNIFF_TYPES = ("", "text/plain", "application/octet-stream")


@dataclass(frozen=True)
class ImportedRow:
    """A valid row: where it was, what it says, and its fingerprint."""

    line: int
    row: KolableOrderRow
    fingerprint: str

    @property
    def order_id(self) -> str:
        return self.row.order_id


@dataclass(frozen=True)
class ImportResult:
    """The outcome of parsing one file: the good rows, and every problem with its line."""

    format: Format | None
    file_sha256: str
    rows: tuple[ImportedRow, ...] = ()
    errors: tuple[ImportRowError, ...] = ()
    rows_read: int = 0  # data rows seen (blank lines not counted)
    ignored_columns: tuple[str, ...] = ()

    @property
    def import_id(self) -> str:
        """The id of this import: the file's SHA-256, so the same file is the same import."""
        return self.file_sha256

    @property
    def file_errors(self) -> tuple[ImportRowError, ...]:
        return tuple(e for e in self.errors if e.scope == "file")

    @property
    def rejected_lines(self) -> tuple[int, ...]:
        """The lines of the rows that were rejected, each once."""
        return tuple(sorted({e.line for e in self.errors if e.scope == "row" and e.line is not None}))

    @property
    def rejected(self) -> int:
        return len(self.rejected_lines)

    def completed_event(self, *, unchanged: int, actor: str, at: datetime,
                        source_name: str = "") -> KolableImportCompleted:
        """The KolableImportCompleted event once the application knows how many rows were unchanged."""
        if not 0 <= unchanged <= len(self.rows):
            raise ValueError(f"unchanged must be between 0 and {len(self.rows)}")
        limit = KolableImportCompleted.MAX_ERRORS_IN_EVENT
        return KolableImportCompleted(
            import_id=self.import_id, source_name=source_name[:255], format=self.format,
            rows=len(self.rows) + self.rejected, accepted=len(self.rows) - unchanged, unchanged=unchanged,
            rejected=self.rejected, errors=list(self.errors[:limit]), errors_total=len(self.errors),
            actor=actor, at=at)


def fingerprint(row: KolableOrderRow) -> str:
    """SHA-256 of the row's canonical JSON (sorted keys, UTC times, minor units)."""
    canonical = json.dumps(row.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- entry point -------------------------------------------------------------------------


def detect_format(filename_or_content_type: str | None, data: bytes) -> Format | None:
    """csv or json from a file name (orders.csv) or a content type (text/csv; charset=utf-8).

    A generic or missing type (text/plain, application/octet-stream) is sniffed: a body starting
    with `[` or `{` is JSON, anything else CSV. Any other type is refused (None).
    """
    hint = (filename_or_content_type or "").strip().lower()
    media = hint.split(";", 1)[0].strip()
    if media.endswith(".json") or media in JSON_TYPES or media.endswith("+json"):
        return "json"
    if media.endswith(".csv") or media in CSV_TYPES:
        return "csv"
    if media in SNIFF_TYPES or ("/" not in media and "." not in media):
        head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        return "json" if head in (b"[", b"{") else "csv"
    return None


def parse_export(data: bytes, filename_or_content_type: str | None = None, *,
                 timezone: str = DEFAULT_TIMEZONE) -> ImportResult:
    """Parse an export of orders and payments into validated rows and per-line errors.

    `timezone` is where a date without a time is read as midnight. Never raises on bad input: a
    file that cannot be read at all gives one file-level error and no rows.
    """
    digest = hashlib.sha256(data).hexdigest()
    fmt = detect_format(filename_or_content_type, data)
    if fmt is None:
        return _file_error(None, digest, "format",
                           f"unsupported file type {filename_or_content_type!r}: send CSV (.csv, text/csv) "
                           "or JSON (.json, application/json)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return _file_error(fmt, digest, "encoding", f"not UTF-8: byte {exc.start} (line {line}) cannot be decoded")
    tz = ZoneInfo(timezone)
    return _parse_csv(text, digest, tz) if fmt == "csv" else _parse_json(text, digest, tz)


def _file_error(fmt: Format | None, digest: str, field_name: str, reason: str, line: int | None = None) -> ImportResult:
    return ImportResult(format=fmt, file_sha256=digest,
                        errors=(ImportRowError(scope="file", line=line, field=field_name, reason=reason),))


def _normalise_column(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lstrip("\ufeff").lower())


def _missing_columns(columns: Iterable[str]) -> list[str]:
    present = set(columns)
    missing = []
    for entry in REQUIRED_COLUMNS:
        options = (entry,) if isinstance(entry, str) else entry
        if not present.intersection(options):
            missing.append(" or ".join(options))
    return missing


class _Rows:
    """Collects valid rows and errors, refusing a second row for an order id already seen in the file."""

    def __init__(self) -> None:
        self.rows: list[ImportedRow] = []
        self.errors: list[ImportRowError] = []
        self.first_line: dict[str, int] = {}
        self.read = 0

    def add(self, line: int, values: Mapping[str, Any], tz: ZoneInfo) -> None:
        self.read += 1
        row, errors = _validate(values, tz, line)
        order_id = row.order_id if row else _order_id_hint(values)
        if row is not None and row.order_id in self.first_line:
            errors = [ImportRowError(line=line, field="order_id", order_id=row.order_id,
                                     reason=f"order {row.order_id} is already on line {self.first_line[row.order_id]}"
                                            "; one row per order")]
        if errors:
            self.errors.extend(e if e.order_id else e.model_copy(update={"order_id": order_id}) for e in errors)
            return
        assert row is not None
        self.first_line[row.order_id] = line
        self.rows.append(ImportedRow(line=line, row=row, fingerprint=fingerprint(row)))

    def result(self, fmt: Format, digest: str, ignored: Iterable[str],
               file_errors: Iterable[ImportRowError] = ()) -> ImportResult:
        return ImportResult(format=fmt, file_sha256=digest, rows=tuple(self.rows),
                            errors=tuple(list(file_errors) + self.errors), rows_read=self.read,
                            ignored_columns=tuple(sorted(set(ignored))))


def _order_id_hint(values: Mapping[str, Any]) -> str | None:
    raw = values.get("order_id")
    if isinstance(raw, str) and _ID.fullmatch(raw.strip()) and len(raw.strip()) <= 64:
        return raw.strip()
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return None


# --- CSV ---------------------------------------------------------------------------------


def _parse_csv(text: str, digest: str, tz: ZoneInfo) -> ImportResult:
    # newline="" lets the csv module see quoted line breaks; reader.line_num counts physical lines.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out = _Rows()
    header: list[str] | None = None
    header_line = 1
    problems: list[ImportRowError] = []
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            reason = f"unreadable CSV: {exc}"
            if "unexpected end of data" in str(exc):
                reason += f"; a quote opened on line {start} is never closed, so nothing after it was read"
            problems.append(ImportRowError(line=start, field="row", reason=reason))
            continue
        if not any(cell.strip() for cell in record):
            continue  # blank line, or a row of empty cells as spreadsheets leave them
        if header is None:
            header, header_line = [_normalise_column(c) for c in record], start
            duplicates = sorted({c for c in header if c and header.count(c) > 1})
            missing = _missing_columns(header)
            if duplicates or missing:
                parts = []
                if missing:
                    parts.append(f"missing required columns: {', '.join(missing)}")
                if duplicates:
                    parts.append(f"duplicate columns: {', '.join(duplicates)}")
                return _file_error("csv", digest, "header", "; ".join(parts), line=header_line)
            continue
        if len(record) != len(header):
            out.read += 1
            problems.append(ImportRowError(line=start, field="row", order_id=None,
                                           reason=f"has {len(record)} fields; the header has {len(header)}"))
            continue
        out.add(start, {name: cell for name, cell in zip(header, record, strict=True) if name}, tz)
    if header is None:
        return _file_error("csv", digest, "header", "the file is empty: expected a header row", line=1)
    ignored = [c for c in header if c and c not in KNOWN_COLUMNS]
    out.errors = sorted(out.errors + problems, key=lambda e: e.line or 0)
    return out.result("csv", digest, ignored)


# --- JSON --------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _parse_json(text: str, digest: str, tz: ZoneInfo) -> ImportResult:
    try:
        # Decimal for every non-integer number: an amount like 1200.50 is never a float.
        doc = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return _file_error("json", digest, "json", f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
    except ValueError as exc:
        return _file_error("json", digest, "json", f"invalid JSON: {exc}")
    if isinstance(doc, dict) and isinstance(doc.get("orders"), list):
        items = doc["orders"]
    elif isinstance(doc, list):
        items = doc
    else:
        return _file_error("json", digest, "json", 'expected an array of order objects or {"orders": [...]}')
    objects = [item for item in items if isinstance(item, dict)]
    columns = {_normalise_column(str(k)) for obj in objects for k in obj}
    missing = _missing_columns(columns)
    if objects and missing:
        return _file_error("json", digest, "columns",
                           f"missing required columns (in every object): {', '.join(missing)}")
    out = _Rows()
    for index, item in enumerate(items):
        line = index + 1
        if not isinstance(item, dict):
            out.read += 1
            out.errors.append(ImportRowError(line=line, field="row", reason="must be a JSON object"))
            continue
        out.add(line, {_normalise_column(str(k)): v for k, v in item.items()}, tz)
    return out.result("json", digest, [c for c in columns if c not in KNOWN_COLUMNS])


# --- one row -----------------------------------------------------------------------------


class _Bad(ValueError):
    """A value that is not of its type; becomes a row error naming the field."""


def _validate(values: Mapping[str, Any], tz: ZoneInfo,
              line: int) -> tuple[KolableOrderRow | None, list[ImportRowError]]:
    errors: list[ImportRowError] = []
    parsed: dict[str, Any] = {}

    def take(name: str, parse: Callable[[Any], Any]) -> Any:
        try:
            value = parse(values.get(name))
        except _Bad as exc:
            errors.append(ImportRowError(line=line, field=name, reason=str(exc)))
            return None
        parsed[name] = value
        return value

    order_id = take("order_id", _order_id)
    for name in ("student_id", "course_id", "payment_ref", "line_thread", "notes"):
        take(name, partial(_text, max_length=MAX_TEXT[name], multiline=name == "notes"))
    currency = take("currency", _currency)
    for name in ("ordered_at", "paid_at", "refunded_at", "disputed_at"):
        take(name, lambda v: _when(v, tz))
    status = take("payment_status", lambda v: _enum(PaymentStatus, v))
    dispute = take("dispute_status", lambda v: _enum(DisputeStatus, v) or DisputeStatus.NONE)

    amount = refunded = None
    if currency is not None:
        amount = _amount_pair(values, "amount", "amount_minor", currency, errors, line, required=True)
        refunded = _amount_pair(values, "refunded_amount", "refunded_amount_minor", currency, errors, line)
    if errors:
        return None, errors

    # Cross-field rules: contradictions are errors, absences are data gaps (kept as None).
    def rule(field_name: str, reason: str) -> None:
        errors.append(ImportRowError(line=line, field=field_name, reason=reason))

    assert amount is not None
    if refunded is not None and refunded > amount:
        rule("refunded_amount", f"{_fmt(refunded, currency)} is more than the amount {_fmt(amount, currency)}")
    if status is PaymentStatus.REFUNDED:
        if refunded is None:
            refunded = amount  # "refunded" means in full
        elif refunded != amount:
            rule("refunded_amount", f"payment_status refunded is a full refund of {_fmt(amount, currency)}; "
                                    f"use partially_refunded for {_fmt(refunded, currency)}")
    elif status is PaymentStatus.PARTIALLY_REFUNDED:
        if refunded is not None and not 0 < refunded < amount:
            rule("refunded_amount", "a partial refund must be more than 0 and less than the amount")
    elif refunded or parsed.get("refunded_at") is not None:
        rule("refunded_amount" if refunded else "refunded_at",
             f"a refund needs payment_status refunded or partially_refunded, not {status or 'empty'}")
    if status is not None and not status.charged:
        if dispute is not DisputeStatus.NONE:
            rule("dispute_status", f"a dispute needs a successful charge; payment_status is {status}")
        if parsed.get("paid_at") is not None:
            rule("paid_at", f"a payment date contradicts payment_status {status}")
    paid_at, refunded_at = parsed.get("paid_at"), parsed.get("refunded_at")
    if paid_at is not None and refunded_at is not None and refunded_at < paid_at:
        rule("refunded_at", "is before paid_at")
    if errors:
        return None, errors

    if not refunded and status is not PaymentStatus.PARTIALLY_REFUNDED:
        refunded = None  # a zero refund on a paid order is no refund
    try:
        row = KolableOrderRow(
            order_id=order_id, student_id=parsed["student_id"], course_id=parsed["course_id"],
            amount=Money(amount=amount, currency=currency), ordered_at=parsed["ordered_at"],
            payment_status=status, paid_at=paid_at, payment_ref=parsed["payment_ref"],
            refunded_amount=Money(amount=refunded, currency=currency) if refunded is not None else None,
            refunded_at=refunded_at, dispute_status=dispute, disputed_at=parsed["disputed_at"],
            line_thread=parsed["line_thread"], notes=parsed["notes"])
    except ValidationError as exc:  # defensive: the checks above should make this unreachable
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "row"
        return None, [ImportRowError(line=line, field=loc, reason=first.get("msg", "invalid"))]
    return row, []


def _fmt(minor: int, currency: str) -> str:
    return Money(amount=minor, currency=currency).format()


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any, max_length: int, *, multiline: bool = False) -> str | None:
    if _blank(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Bad("must be text")
    text = str(value).strip()
    if len(text) > max_length:
        raise _Bad(f"is longer than {max_length} characters")
    if not multiline and _CONTROL.search(text):
        raise _Bad("must not contain control characters or line breaks")
    return text


def _order_id(value: Any) -> str:
    text = _text(value, 10_000)
    if text is None:
        raise _Bad("is required")
    if len(text) > 64 or not _ID.fullmatch(text):
        raise _Bad("must be 1-64 of A-Z a-z 0-9 _ . : -")
    return text


def _currency(value: Any) -> str:
    text = _text(value, 100)
    if text is None:
        raise _Bad("is required (ISO 4217, e.g. TWD)")
    code = text.upper()
    if code not in CURRENCY_EXPONENTS:
        raise _Bad(f"unsupported currency {text!r}; supported: {', '.join(sorted(CURRENCY_EXPONENTS))}")
    return code


def _enum(kind: Any, value: Any) -> Any:
    text = _text(value, 100)
    if text is None:
        return None
    try:
        return kind(text.lower())
    except ValueError:
        raise _Bad(f"{text!r} is not one of {', '.join(m.value for m in kind)}") from None


def _when(value: Any, tz: ZoneInfo) -> datetime | None:
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise _Bad("must be an ISO 8601 string, e.g. 2025-05-12 or 2025-05-12T10:30:00+08:00")
    text = value.strip()
    if _DATE_ONLY.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise _Bad(f"{text!r} is not a valid date") from None
        return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Bad(f"{text!r} is not ISO 8601, e.g. 2025-05-12 or 2025-05-12T10:30:00+08:00") from None
    if moment.tzinfo is None:
        raise _Bad(f"{text!r} has a time but no UTC offset; add one (+08:00, Z) or give the date only")
    return moment.astimezone(UTC)


def parse_major_amount(value: Any, currency: str) -> int:
    """An amount in major units ("28000", "1,200.50", or a JSON number) -> exact integer minor units.

    Decimal arithmetic only. Refused: negative amounts, exponents, malformed thousands separators,
    and any amount that is not a whole number of the currency's minor units ("0.001" TWD).
    Trailing zeros beyond the currency's decimals are accepted ("100.000" TWD = 10000).
    """
    if isinstance(value, bool):
        raise _Bad("must be a decimal amount")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise _Bad("must not be negative")
        if not _MAJOR.fullmatch(text):
            raise _Bad(f"{text!r} is not a decimal amount like 28000 or 1,200.50")
        number = Decimal(text.replace(",", ""))
    else:
        raise _Bad("must be a decimal amount")
    if not number.is_finite():
        raise _Bad("must be a finite number")
    if number < 0:
        raise _Bad("must not be negative")
    exponent = CURRENCY_EXPONENTS[currency]
    with localcontext() as ctx:
        ctx.prec = 60  # exact for any amount we accept: no rounding can hide a fraction
        try:
            minor = number.scaleb(exponent)
        except InvalidOperation:
            raise _Bad("is not a valid amount") from None
        if minor != minor.to_integral_value():
            raise _Bad(f"{number} has more decimals than {currency} allows ({exponent})")
        result = int(minor)
    if result > MAX_MINOR_UNITS:
        raise _Bad("is too large")
    return result


def _minor_amount(value: Any) -> int:
    if isinstance(value, bool):
        raise _Bad("must be an integer number of minor units")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and _MINOR.fullmatch(value.strip()):
        result = int(value.strip())
    elif isinstance(value, str) and value.strip().startswith("-"):
        raise _Bad("must not be negative")
    else:
        raise _Bad("must be an integer number of minor units, e.g. 120050 for TWD 1,200.50")
    if result < 0:
        raise _Bad("must not be negative")
    if result > MAX_MINOR_UNITS:
        raise _Bad("is too large")
    return result


def _amount_pair(values: Mapping[str, Any], major: str, minor: str, currency: str, errors: list[ImportRowError],
                 line: int, *, required: bool = False) -> int | None:
    """The amount from `major` (major units) or `minor` (minor units); both given must agree."""
    found: dict[str, int] = {}
    for name, parse in ((major, lambda v: parse_major_amount(v, currency)), (minor, _minor_amount)):
        raw = values.get(name)
        if _blank(raw):
            continue
        try:
            found[name] = parse(raw)
        except _Bad as exc:
            errors.append(ImportRowError(line=line, field=name, reason=str(exc)))
            return None
    if len(set(found.values())) > 1:
        errors.append(ImportRowError(line=line, field=minor, reason=(
            f"{minor} {found[minor]} does not match {major} {values.get(major)} ({_fmt(found[major], currency)})")))
        return None
    if not found:
        if required:
            errors.append(ImportRowError(line=line, field=major, reason=f"is required ({major} or {minor})"))
        return None
    return next(iter(found.values()))

