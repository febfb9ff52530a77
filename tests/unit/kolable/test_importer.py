"""The export parser: line numbers, BOM, header checks, exact decimals, fingerprints and the documented example."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from libs.domain.money import Money
from services.payments.domain.kolable.events import DisputeStatus, PaymentStatus
from services.payments.domain.kolable.importer import (
    ImportResult,
    detect_format,
    parse_export,
    parse_major_amount,
)
from tests.unit.kolable import DOC, FIXTURES, HEADER, csv_bytes

GOOD = "K-1,s-1,c-1,28000,TWD,2025-05-12T10:00:00+08:00,paid,2025-05-12T10:01:00+08:00,pi_1,,,none,,line-1,"


def errors_by_line(result: ImportResult) -> dict[int | None, set[str]]:
    out: dict[int | None, set[str]] = {}
    for e in result.errors:
        out.setdefault(e.line, set()).add(e.field)
    return out


def one_row(**cells: str) -> bytes:
    """A CSV with one row: GOOD with some cells replaced."""
    names = HEADER.split(",")
    values = dict(zip(names, GOOD.split(","), strict=True))
    values.update(cells)
    names += [n for n in cells if n not in names]  # e.g. amount_minor
    row = ",".join(f'"{values[n]}"' if "," in values[n] else values[n] for n in names)
    return csv_bytes(row, header=",".join(names))


# --- line numbers ---------------------------------------------------------------------------


def test_csv_bad_rows_are_reported_by_physical_line_and_good_rows_accepted() -> None:
    result = parse_export((FIXTURES / "orders.csv").read_bytes(), "orders.csv")
    assert result.format == "csv"
    assert [r.order_id for r in result.rows] == ["K-1", "K-2", "K-4", "K-8"]
    assert [r.line for r in result.rows] == [2, 3, 5, 11]  # K-4's quoted note spans lines 5-6; line 8 is blank
    assert errors_by_line(result) == {4: {"amount"}, 7: {"ordered_at"}, 9: {"payment_status"}, 10: {"amount"}}
    assert result.rejected_lines == (4, 7, 9, 10)
    by_line = {e.line: e for e in result.errors}
    assert by_line[4].order_id == "K-3" and "'abc' is not a decimal amount" in by_line[4].reason
    assert "no UTC offset" not in by_line[7].reason and "ISO 8601" in by_line[7].reason
    assert "'bounced' is not one of paid, failed, pending, refunded, partially_refunded" in by_line[9].reason
    assert "more decimals than TWD allows" in by_line[10].reason
    assert result.rows_read == 8


def test_json_bad_items_are_reported_by_array_position() -> None:
    result = parse_export((FIXTURES / "orders.json").read_bytes(), "application/json")
    assert result.format == "json"
    assert [(r.line, r.order_id) for r in result.rows] == [(1, "K-1"), (2, "K-2"), (6, "K-6")]
    assert errors_by_line(result) == {3: {"ordered_at"}, 4: {"row"}, 5: {"amount"}}
    k2, k6 = result.rows[1].row, result.rows[2].row
    assert k2.amount == Money(amount=2800000, currency="TWD")  # amount_minor, currency in lower case
    assert k6.amount == Money(amount=120050, currency="TWD")  # a JSON number read as a decimal, not a float
    assert k6.student_id == "12345"


def test_json_wrapped_in_an_orders_object_and_the_same_rows_give_the_same_fingerprints_as_csv() -> None:
    from_csv = parse_export((FIXTURES / "orders.csv").read_bytes(), "text/csv")
    items = json.loads((FIXTURES / "orders.json").read_text())
    from_json = parse_export(json.dumps({"orders": items}).encode(), "export.json")
    csv_prints = {r.order_id: r.fingerprint for r in from_csv.rows}
    json_prints = {r.order_id: r.fingerprint for r in from_json.rows}
    # K-1 and K-2 say the same things (K-2 in minor units, UTC, lower-case currency): same fingerprints.
    assert json_prints["K-1"] == csv_prints["K-1"]
    assert json_prints["K-2"] == csv_prints["K-2"]


def test_a_field_count_different_from_the_header_rejects_that_row() -> None:
    result = parse_export(csv_bytes(GOOD, "K-2,s-1,c-1", GOOD.replace("K-1", "K-3") + ",extra"), "a.csv")
    assert [r.order_id for r in result.rows] == ["K-1"]
    assert errors_by_line(result) == {3: {"row"}, 4: {"row"}}
    assert "has 3 fields; the header has 15" in result.errors[0].reason


def test_broken_quoting_rejects_the_row_and_says_when_the_rest_of_the_file_was_lost() -> None:
    stray = GOOD.replace("K-1", "K-2").replace("line-1", '"line"x')
    result = parse_export(csv_bytes(GOOD, stray, GOOD.replace("K-1", "K-3")), "a.csv")
    assert [r.order_id for r in result.rows] == ["K-1", "K-3"] and errors_by_line(result) == {3: {"row"}}
    result = parse_export(csv_bytes(GOOD, 'K-2,"unterminated', GOOD.replace("K-1", "K-3")), "a.csv")
    assert [r.order_id for r in result.rows] == ["K-1"]
    assert "a quote opened on line 3 is never closed" in result.errors[0].reason


def test_a_second_row_for_the_same_order_is_rejected_naming_the_first_line() -> None:
    result = parse_export(csv_bytes(GOOD, GOOD), "a.csv")
    assert len(result.rows) == 1
    (error,) = result.errors
    assert (error.line, error.field, error.order_id) == (3, "order_id", "K-1")
    assert "already on line 2" in error.reason


def test_every_problem_of_a_row_is_reported() -> None:
    result = parse_export(one_row(order_id="", amount="-5", ordered_at="yesterday"), "a.csv")
    assert errors_by_line(result) == {2: {"order_id", "ordered_at", "amount"}}


# --- encoding and header ----------------------------------------------------------------------


def test_a_byte_order_mark_is_ignored_and_gives_the_same_fingerprints() -> None:
    plain = parse_export(csv_bytes(GOOD), "a.csv")
    with_bom = parse_export(csv_bytes(GOOD, bom=True), "a.csv")
    assert not with_bom.errors
    assert [r.fingerprint for r in with_bom.rows] == [r.fingerprint for r in plain.rows]
    assert with_bom.file_sha256 != plain.file_sha256  # a different file, the same content


def test_missing_required_columns_give_one_file_level_error_naming_them() -> None:
    header = ",".join(c for c in HEADER.split(",") if c not in ("student_id", "payment_ref", "amount"))
    result = parse_export(csv_bytes("K-1,c-1,TWD", header=header), "a.csv")
    assert result.rows == ()
    (error,) = result.errors
    assert (error.scope, error.line, error.field) == ("file", 1, "header")
    assert error.reason == "missing required columns: student_id, amount or amount_minor, payment_ref"


def test_optional_columns_may_be_absent_and_unknown_columns_are_ignored() -> None:
    header = ("Order ID,student-id,course_id,amount_minor,currency,ordered_at,payment_status,paid_at,payment_ref,"
              "refunded_amount,refunded_at,campaign")
    result = parse_export(csv_bytes("K-1,s-1,c-1,2800000,TWD,2025-05-12,paid,2025-05-12,pi_1,,,spring", header=header),
                          "a.csv")
    assert not result.errors
    assert result.ignored_columns == ("campaign",)
    row = result.rows[0].row
    assert row.dispute_status is DisputeStatus.NONE and row.line_thread is None


def test_json_missing_a_required_column_in_every_object_is_a_file_error() -> None:
    result = parse_export(json.dumps([{"order_id": "K-1", "amount": "1", "currency": "TWD"}]).encode(), "x.json")
    (error,) = result.errors
    assert error.scope == "file" and "student_id" in error.reason and "payment_ref" in error.reason


@pytest.mark.parametrize("data, hint, field", [
    (b"\xff\xfeo\x00r\x00", "a.csv", "encoding"),
    (b'[{"order_id": ', "a.json", "json"),
    (b'{"rows": []}', "a.json", "json"),
    (b"", "a.csv", "header"),
    (b"order_id\n", "orders.xlsx", "format"),
], ids=["not-utf8", "broken-json", "json-wrong-shape", "empty-csv", "xlsx"])
def test_unreadable_files_give_one_file_error(data: bytes, hint: str, field: str) -> None:
    result = parse_export(data, hint)
    assert result.rows == ()
    (error,) = result.errors
    assert (error.scope, error.field) == ("file", field)


@pytest.mark.parametrize("hint, data, expected", [
    ("orders.csv", b"[", "csv"),
    ("text/csv; charset=utf-8", b"", "csv"),
    ("ORDERS.JSON", b"", "json"),
    ("application/json", b"", "json"),
    ("application/octet-stream", b"\xef\xbb\xbf  [{}]", "json"),
    (None, b"order_id,student_id", "csv"),
    ("application/pdf", b"[]", None),
])
def test_format_from_name_or_content_type_or_sniffed(hint: str | None, data: bytes, expected: str | None) -> None:
    assert detect_format(hint, data) == expected


def test_an_empty_json_array_is_an_empty_import() -> None:
    result = parse_export(b"[]", "a.json")
    assert result.rows == () and result.errors == ()


# --- amounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, currency, minor", [
    ("28000", "TWD", 2800000),
    ("1,200.50", "TWD", 120050),
    ("1200.5", "TWD", 120050),
    ("0.01", "TWD", 1),
    ("100.000", "TWD", 10000),  # zeros beyond the currency's decimals change nothing
    ("1,234,567.89", "USD", 123456789),
    ("28000", "JPY", 28000),
    (" 7 ", "TWD", 700),
])
def test_major_amounts_are_converted_exactly(text: str, currency: str, minor: int) -> None:
    assert parse_major_amount(text, currency) == minor


@pytest.mark.parametrize("text, currency, reason", [
    ("0.001", "TWD", "more decimals than TWD allows (2)"),
    ("100.5", "JPY", "more decimals than JPY allows (0)"),
    ("-1", "TWD", "must not be negative"),
    ("1,20.00", "TWD", "not a decimal amount"),
    ("1e3", "TWD", "not a decimal amount"),
    ("NT$100", "TWD", "not a decimal amount"),
    ("", "TWD", "not a decimal amount"),
])
def test_bad_major_amounts_are_refused(text: str, currency: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_major_amount(text, currency)


def test_a_big_amount_with_many_decimals_is_not_rounded_into_acceptance() -> None:
    # 28 significant digits would fit Decimal's default context after rounding; ours is exact.
    with pytest.raises(ValueError, match="more decimals"):
        parse_major_amount("12345678901234.0000000000000000000000000001", "TWD")


@pytest.mark.parametrize("cells, field, reason", [
    ({"amount": "", "amount_minor": ""}, "amount", "is required"),
    ({"amount_minor": "120050", "amount": "1,200.51"}, "amount_minor", "does not match"),
    ({"currency": "XXX"}, "currency", "unsupported currency"),
    ({"currency": ""}, "currency", "is required"),
    ({"order_id": "K 1"}, "order_id", "A-Z a-z"),
    ({"paid_at": "2025-05-12 10:00"}, "paid_at", "no UTC offset"),
    ({"payment_status": "refunded", "refunded_amount": "100", "refunded_at": "2025-05-13"},
     "refunded_amount", "use partially_refunded"),
    ({"payment_status": "partially_refunded", "refunded_amount": "28000", "refunded_at": "2025-05-13"},
     "refunded_amount", "less than the amount"),
    ({"payment_status": "partially_refunded", "refunded_amount": "30000", "refunded_at": "2025-05-13"},
     "refunded_amount", "more than the amount"),
    ({"refunded_amount": "100"}, "refunded_amount", "needs payment_status refunded"),
    ({"refunded_at": "2025-05-13"}, "refunded_at", "needs payment_status refunded"),
    ({"payment_status": "failed", "dispute_status": "lost"}, "dispute_status", "needs a successful charge"),
    ({"payment_status": "refunded", "refunded_at": "2025-05-01"}, "refunded_at", "before paid_at"),
    ({"dispute_status": "open"}, "dispute_status", "not one of"),
    ({"student_id": "s\t1"}, "student_id", "control characters"),
])
def test_structural_and_contradictory_rows_are_rejected(cells: dict[str, str], field: str, reason: str) -> None:
    result = parse_export(one_row(**cells), "a.csv")
    assert result.rows == ()
    assert any(e.field == field and reason in e.reason and e.line == 2 for e in result.errors), result.errors


def test_amount_minor_alone_and_both_columns_agreeing_are_accepted() -> None:
    assert parse_export(one_row(amount="", amount_minor="120050"), "a.csv").rows[0].row.amount.amount == 120050
    assert parse_export(one_row(amount="1,200.50", amount_minor="120050"), "a.csv").rows[0].row.amount.amount == 120050


# --- normalisation and data gaps -----------------------------------------------------------------


def test_missing_non_structural_values_are_accepted_as_none() -> None:
    result = parse_export(one_row(student_id="", course_id=" ", payment_ref="", paid_at="", ordered_at="",
                                  payment_status="", line_thread=""), "a.csv")
    assert not result.errors
    row = result.rows[0].row
    assert (row.student_id, row.course_id, row.payment_ref, row.paid_at, row.ordered_at, row.payment_status,
            row.line_thread) == (None, None, None, None, None, None, None)


def test_a_refunded_row_without_a_refund_amount_is_refunded_in_full() -> None:
    row = parse_export(one_row(payment_status="refunded", refunded_at="2025-05-14"), "a.csv").rows[0].row
    assert row.payment_status is PaymentStatus.REFUNDED
    assert row.refunded_amount == row.amount


def test_dates_are_midnight_in_taipei_and_times_are_stored_in_utc() -> None:
    row = parse_export(one_row(ordered_at="2025-05-12", paid_at="2025-05-12T10:01:00Z"), "a.csv").rows[0].row
    assert row.ordered_at == datetime(2025, 5, 11, 16, 0, tzinfo=UTC)
    assert row.paid_at == datetime(2025, 5, 12, 10, 1, tzinfo=UTC)
    assert row.paid_at.utcoffset() is not None and row.paid_at.tzinfo == UTC


def test_fingerprints_ignore_offsets_whitespace_case_of_enums_and_ignored_columns() -> None:
    a = parse_export(one_row(paid_at="2025-05-12T10:01:00+08:00", payment_status="paid"), "a.csv")
    b = parse_export(one_row(paid_at="2025-05-12T02:01:00Z", payment_status=" PAID ", student_id=" s-1 "), "a.csv")
    assert a.rows[0].fingerprint == b.rows[0].fingerprint
    c = parse_export(one_row(notes="changed"), "a.csv")
    assert c.rows[0].fingerprint != a.rows[0].fingerprint


# --- idempotent re-import ----------------------------------------------------------------------


def test_re_importing_the_same_file_gives_the_same_import_id_rows_and_fingerprints() -> None:
    data = (FIXTURES / "orders.csv").read_bytes()
    first, second = parse_export(data, "orders.csv"), parse_export(data, "orders.csv")
    assert first == second
    assert first.import_id == second.import_id and len(first.import_id) == 64
    assert [(r.order_id, r.fingerprint) for r in first.rows] == [(r.order_id, r.fingerprint) for r in second.rows]


def test_the_completion_event_counts_accepted_unchanged_and_rejected() -> None:
    result = parse_export((FIXTURES / "orders.csv").read_bytes(), "orders.csv")
    at = datetime(2025, 5, 21, 9, 0, tzinfo=UTC)
    event = result.completed_event(unchanged=1, actor="wade", at=at, source_name="orders.csv")
    assert (event.rows, event.accepted, event.unchanged, event.rejected) == (8, 3, 1, 4)
    assert event.errors_total == 4 and [e.line for e in event.errors] == [4, 7, 9, 10]
    with pytest.raises(ValueError):
        result.completed_event(unchanged=5, actor="wade", at=at)


# --- the documented example -------------------------------------------------------------------


def doc_block(kind: str) -> str:
    match = re.search(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, f"no {kind} example in {DOC.name}"
    return match.group(1)


def test_the_documented_csv_example_parses_cleanly_and_matches_the_documented_json() -> None:
    csv_result = parse_export(doc_block("csv").encode("utf-8"), "example.csv")
    assert not csv_result.errors
    assert [r.order_id for r in csv_result.rows] == [
        "K-240512-0001", "K-240515-0002", "K-240513-0003", "K-240514-0004", "K-240516-0005"]
    json_result = parse_export(doc_block("json").encode("utf-8"), "example.json")
    assert not json_result.errors
    assert json_result.rows[0].fingerprint == csv_result.rows[0].fingerprint


def test_the_documented_classification_of_the_example_holds() -> None:
    from services.payments.domain.kolable.classify import classify, inputs_from_rows

    rows = parse_export(doc_block("csv").encode("utf-8"), "example.csv").rows
    by_id = {c.order_id: c for c in classify(*inputs_from_rows(r.row for r in rows))}
    assert {k: v.status.value for k, v in by_id.items()} == {
        "K-240512-0001": "refunded_rebought", "K-240515-0002": "paid_valid", "K-240513-0003": "refunded_no_rebuy",
        "K-240514-0004": "dispute_pending", "K-240516-0005": "data_gap"}
    assert by_id["K-240512-0001"].rebuy_order_id == "K-240515-0002"
    assert by_id["K-240512-0001"].recovered.format() == "TWD 28,000.00"
    assert by_id["K-240513-0003"].refunded.format() == "TWD 200.00"
    assert by_id["K-240514-0004"].open_dispute.format() == "TWD 28,000.00"
    assert by_id["K-240516-0005"].missing_fields == ("student_id", "payment_ref")


def test_every_documented_column_is_a_known_column_and_vice_versa() -> None:
    from services.payments.domain.kolable.importer import KNOWN_COLUMNS

    documented = set(re.findall(r"^\| `([a-z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M))
    assert documented == set(KNOWN_COLUMNS)
