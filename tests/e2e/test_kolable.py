"""The Kolable refund/re-buy reconciliation through the running payments service: import (CSV and
JSON) with line-numbered errors, idempotent re-import, re-buy recognition across imports, the
scorecard against an independent calculation, and the approver's decisions."""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest

from libs.devstack.client import PlatformClient

pytestmark = pytest.mark.e2e

COLUMNS = ["order_id", "student_id", "course_id", "amount", "currency", "ordered_at", "payment_status", "paid_at",
           "payment_ref", "refunded_amount", "refunded_at", "dispute_status", "disputed_at", "line_thread", "notes"]
IMPORTER = {"X-Actor": "wade", "X-Role": "importer"}
APPROVER = {"X-Actor": "louis", "X-Role": "approver"}
RECONCILER = {"X-Actor": "huber", "X-Role": "reconciler"}
STATUSES = ["paid_valid", "refunded_no_rebuy", "refunded_rebought", "dispute_pending", "data_gap"]


def tag() -> str:
    return uuid.uuid4().hex[:8]


def row(order_id: str, student: str, course: str = "pm-bootcamp", amount: str = "28000", *,
        status: str = "paid", ordered: str = "2025-05-12T10:00:00+08:00", paid: str = "2025-05-12T10:02:00+08:00",
        ref: str | None = None, refunded_amount: str = "", refunded_at: str = "", dispute: str = "none",
        disputed_at: str = "", line: str | None = "line://chat/U1", notes: str = "") -> dict[str, str]:
    return {"order_id": order_id, "student_id": student, "course_id": course, "amount": amount, "currency": "TWD",
            "ordered_at": ordered, "payment_status": status, "paid_at": paid,
            "payment_ref": f"pi_{order_id}" if ref is None else ref, "refunded_amount": refunded_amount,
            "refunded_at": refunded_at, "dispute_status": dispute, "disputed_at": disputed_at,
            "line_thread": line or "", "notes": notes}


def to_csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


async def import_file(client: PlatformClient, stack: Any, body: bytes, content_type: str = "text/csv",
                      headers: dict[str, str] | None = None) -> Any:
    return await client.http.post(f"{stack.url('payments')}/kolable/orders/import", content=body,
                                  headers={"Content-Type": content_type, **(headers or IMPORTER)})


async def get_scorecard(client: PlatformClient, stack: Any) -> dict[str, Any]:
    r = await client.http.get(f"{stack.url('payments')}/kolable/reconciliation/scorecard")
    assert r.status_code == 200, r.text
    return r.json()


async def stream_events(pg_dsn: str, stream_ids: list[str]) -> list[tuple[str, int, str, dict[str, Any]]]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT stream_id, stream_version, event_type, data FROM events"
                                " WHERE stream_id = ANY($1::text[]) ORDER BY stream_id, stream_version", stream_ids)
        return [(r["stream_id"], r["stream_version"], r["event_type"], json.loads(r["data"])) for r in rows]
    finally:
        await conn.close()


async def classification_of(pg_dsn: str, order_id: str) -> dict[str, Any]:
    events = await stream_events(pg_dsn, [f"kolable-{order_id}"])
    return [data for _, _, kind, data in events if kind == "KolableOrderClassified"][-1]["classification"]


def twd(amounts: dict[str, Any]) -> int:
    return int(amounts.get("TWD", {}).get("amount", 0))


async def test_csv_import_reports_bad_rows_by_line_and_reimport_changes_nothing(client: PlatformClient,
                                                                                stack: Any) -> None:
    t = tag()
    rows = [
        row(f"K{t}-1", f"stu-{t}-1", status="refunded", refunded_at="2025-05-14T15:00:00+08:00"),  # line 2
        row(f"K{t}-2", f"stu-{t}-2", amount="1,200.50"),  # line 3
        row(f"K{t}-3", f"stu-{t}-3", amount="12.345"),  # line 4: three decimals in TWD
        row("", f"stu-{t}-4"),  # line 5: no order id
        row(f"K{t}-2", f"stu-{t}-5"),  # line 6: second row for K-2
        row(f"K{t}-6", f"stu-{t}-6", status="refunded", paid="2025-05-14", refunded_at="2025-05-13"),  # line 7
        row(f"K{t}-7", "", ref=""),  # line 8: accepted, data_gap
    ]
    body = to_csv(rows)
    r = await import_file(client, stack, body)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["rows"], report["accepted"], report["rejected"], report["unchanged"]) == (7, 3, 4, 0)
    assert report["file_errors"] == []
    by_line = {e["line"]: e for e in report["errors"]}
    assert sorted(by_line) == [4, 5, 6, 7]
    assert by_line[4]["field"] == "amount" and "decimals" in by_line[4]["reason"]
    assert by_line[5]["field"] == "order_id"
    assert by_line[6]["order_id"] == f"K{t}-2" and "3" in by_line[6]["reason"]  # names the first line
    assert by_line[7]["field"] == "refunded_at"

    streams = [f"kolable-K{t}-{i}" for i in (1, 2, 7)]
    before = await stream_events(stack.pg_dsn, [*streams, f"kolable_import-{report['import_id']}"])
    assert {s for s, _, _, _ in before} >= set(streams)
    assert (await classification_of(stack.pg_dsn, f"K{t}-1"))["status"] == "refunded_no_rebuy"
    assert (await classification_of(stack.pg_dsn, f"K{t}-2"))["status"] == "paid_valid"
    gap = await classification_of(stack.pg_dsn, f"K{t}-7")
    assert gap["status"] == "data_gap" and set(gap["missing_fields"]) >= {"student_id", "payment_ref"}
    card = await get_scorecard(client, stack)

    again = await import_file(client, stack, body)
    assert again.status_code == 200 and again.json() == report
    after = await stream_events(stack.pg_dsn, [*streams, f"kolable_import-{report['import_id']}"])
    assert after == before
    assert [k for s, _, k, _ in after if s.startswith("kolable_import-")] == ["KolableImportCompleted"]
    assert await get_scorecard(client, stack) == card


async def test_the_same_rows_in_another_file_are_unchanged(client: PlatformClient, stack: Any) -> None:
    t = tag()
    rows = [row(f"K{t}-1", f"stu-{t}"), row(f"K{t}-2", f"stu-{t}", course="other")]
    first = await import_file(client, stack, to_csv(rows))
    assert first.json()["accepted"] == 2
    as_json = json.dumps({"orders": rows}).encode()  # the same facts as JSON: another file, same fingerprints
    second = await import_file(client, stack, as_json, "application/json")
    assert second.status_code == 200, second.text
    assert (second.json()["accepted"], second.json()["unchanged"]) == (0, 2)
    assert second.json()["import_id"] != first.json()["import_id"]


async def test_json_rebuy_after_refund_turns_the_refunded_order_into_refunded_rebought(client: PlatformClient,
                                                                                        stack: Any) -> None:
    t = tag()
    student = f"Stu-{t}@example.com"
    refunded = row(f"K{t}-1", student, status="refunded", refunded_at="2025-05-14T15:00:00+08:00")
    r = await import_file(client, stack, to_csv([refunded]))
    assert r.json()["accepted"] == 1
    assert (await classification_of(stack.pg_dsn, f"K{t}-1"))["status"] == "refunded_no_rebuy"
    card = await get_scorecard(client, stack)
    assert f"K{t}-1" in [a["order_id"] for a in card["needing_action"]]

    rebuy = {"order_id": f"K{t}-2", "student_id": student.upper(), "course_id": "pm-bootcamp",
             "amount_minor": 2800000, "currency": "TWD", "ordered_at": "2025-05-15T01:00:00Z",
             "payment_status": "paid", "paid_at": "2025-05-15T09:01:00+08:00", "payment_ref": "pi_rebuy",
             "refunded_amount": None, "refunded_at": None, "dispute_status": "none",
             "line_thread": "line://chat/U1", "notes": "重買"}
    r = await import_file(client, stack, json.dumps({"orders": [rebuy]}).encode(), "application/json")
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["rejected"]) == (1, 0)
    original = await classification_of(stack.pg_dsn, f"K{t}-1")
    assert original["status"] == "refunded_rebought"
    assert original["rebuy_order_id"] == f"K{t}-2"
    assert original["recovered"] == {"amount": 2800000, "currency": "TWD"}
    assert original["cash_gap"]["amount"] == 0
    assert (await classification_of(stack.pg_dsn, f"K{t}-2"))["recovers_order_id"] == f"K{t}-1"
    after = await get_scorecard(client, stack)
    assert f"K{t}-1" not in [a["order_id"] for a in after["needing_action"]]
    assert twd(after["recovered_by_rebuy"]) - twd(card["recovered_by_rebuy"]) == 2800000
    assert after["rebuys"] - card["rebuys"] == 1


async def test_scorecard_equals_an_independent_calculation(client: PlatformClient, stack: Any) -> None:
    t = tag()
    rng = random.Random(20250512)
    rows: list[dict[str, str]] = []
    expected_status: dict[str, str] = {}
    amount_of: dict[str, int] = {}  # minor units
    cash_gap = recovered = 0
    n = 0

    def add(status: str, r: dict[str, str]) -> None:
        rows.append(r)
        expected_status[r["order_id"]] = status
        amount_of[r["order_id"]] = int(r["amount"]) * 100

    while len(rows) < 300:
        n += 1
        student, oid, amount = f"s{t}-{n}", f"G{t}-{n}", rng.randrange(1000, 30000)
        kind = rng.choice(["paid", "refunded", "rebought", "partial", "dispute", "gap", "won"])
        if kind == "paid":
            add("paid_valid", row(oid, student, amount=str(amount)))
        elif kind == "won":  # a dispute won by Kolable is closed: paid_valid
            add("paid_valid", row(oid, student, amount=str(amount), dispute="won", disputed_at="2025-05-20"))
        elif kind == "refunded":
            add("refunded_no_rebuy", row(oid, student, amount=str(amount), status="refunded",
                                         refunded_at="2025-05-14T15:00:00+08:00"))
            cash_gap += amount * 100
        elif kind == "partial":
            part = rng.randrange(1, amount)
            add("refunded_no_rebuy", row(oid, student, amount=str(amount), status="partially_refunded",
                                         refunded_amount=str(part), refunded_at="2025-05-14T15:00:00+08:00"))
            cash_gap += part * 100
        elif kind == "dispute":
            add("dispute_pending", row(oid, student, amount=str(amount), dispute=rng.choice(
                ["needs_response", "under_review"]), disputed_at="2025-05-20"))
            cash_gap += amount * 100
        elif kind == "gap":  # a charge without its payment reference
            add("data_gap", row(oid, student, amount=str(amount), ref=""))
        else:  # refunded, then the same student bought the same course again
            add("refunded_rebought", row(oid, student, amount=str(amount), status="refunded",
                                         refunded_at="2025-05-14T15:00:00+08:00"))
            add("paid_valid", row(f"{oid}-r", student, amount=str(amount), ordered="2025-05-15T09:00:00+08:00",
                                  paid="2025-05-15T09:01:00+08:00"))
            recovered += amount * 100
    rng.shuffle(rows)

    before = await get_scorecard(client, stack)
    r = await import_file(client, stack, to_csv(rows))
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["rejected"]) == (len(rows), 0)
    after = await get_scorecard(client, stack)

    counts = Counter(expected_status.values())
    sums: Counter[str] = Counter()
    for oid, status in expected_status.items():
        sums[status] += amount_of[oid]
    lines_before = {line["status"]: line for line in before["by_status"]}
    lines_after = {line["status"]: line for line in after["by_status"]}
    for status in STATUSES:
        assert lines_after[status]["count"] - lines_before[status]["count"] == counts[status], status
        assert twd(lines_after[status]["amount"]) - twd(lines_before[status]["amount"]) == sums[status], status
    assert after["orders"] - before["orders"] == len(rows)
    assert twd(after["cash_gap"]) - twd(before["cash_gap"]) == cash_gap
    assert twd(after["recovered_by_rebuy"]) - twd(before["recovered_by_rebuy"]) == recovered
    assert after["rebuys"] - before["rebuys"] == counts["refunded_rebought"]
    needing = {a["order_id"] for a in after["needing_action"] if a["order_id"].startswith(f"G{t}-")}
    assert needing == {oid for oid, s in expected_status.items()
                       if s in ("refunded_no_rebuy", "dispute_pending", "data_gap")}


async def test_only_the_approver_decides_and_every_decision_is_an_event(client: PlatformClient,
                                                                       stack: Any) -> None:
    t = tag()
    oid = f"D{t}-1"
    await import_file(client, stack, to_csv([row(oid, f"stu-{t}", status="refunded",
                                                 refunded_at="2025-05-14T15:00:00+08:00")]))
    url = f"{stack.url('payments')}/kolable/refund-decisions"
    body = {"order_id": oid, "decision": "pursue", "reason": "學員已重新上課,需補收"}
    before_events = await stream_events(stack.pg_dsn, [f"kolable-{oid}"])
    before_card = await get_scorecard(client, stack)

    for who in (RECONCILER, IMPORTER, {"X-Actor": "eve", "X-Role": "customer"}):
        denied = await client.http.post(url, json=body, headers=who)
        assert denied.status_code == 403, denied.text
        assert denied.json()["error"]["code"] == "forbidden"
    assert await stream_events(stack.pg_dsn, [f"kolable-{oid}"]) == before_events
    assert await get_scorecard(client, stack) == before_card

    bad = await client.http.post(url, json={**body, "decision": "forgive"}, headers=APPROVER)
    assert bad.status_code == 422
    unknown = await client.http.post(url, json={**body, "order_id": f"nope-{t}"}, headers=APPROVER)
    assert unknown.status_code == 404

    ok = await client.http.post(url, json=body, headers=APPROVER)
    assert ok.status_code == 200, ok.text
    assert ok.json()["recorded"] is True and ok.json()["decision"]["decision"] == "pursue"
    events = await stream_events(stack.pg_dsn, [f"kolable-{oid}"])
    decided = [d for _, _, k, d in events if k == "KolableRefundDecided"]
    assert len(decided) == 1 and decided[0]["actor"] == "louis" and decided[0]["reason"] == body["reason"]

    card = await get_scorecard(client, stack)
    assert oid not in [a["order_id"] for a in card["needing_action"]]
    [item] = [c for c in card["collection_list"] if c["order_id"] == oid]
    assert item["to_collect"] == {"amount": 2800000, "currency": "TWD"} and item["decision_id"] == "d1"
    pursue = {d["decision"]: d for d in card["decisions"]}["pursue"]
    assert pursue["count"] - {d["decision"]: d for d in before_card["decisions"]}["pursue"]["count"] == 1

    # The same decision again records nothing; a different one supersedes it and is another event.
    assert (await client.http.post(url, json=body, headers=APPROVER)).json()["recorded"] is False
    close = await client.http.post(url, json={**body, "decision": "close", "reason": "金額小,關閉"}, headers=APPROVER)
    assert close.json()["recorded"] is True and close.json()["decision"]["supersedes"] == "d1"
    events = await stream_events(stack.pg_dsn, [f"kolable-{oid}"])
    assert [k for _, _, k, _ in events].count("KolableRefundDecided") == 2
    card = await get_scorecard(client, stack)
    assert oid not in [c["order_id"] for c in card["collection_list"]]

    # A decision on a paid_valid order is refused: it needs none.
    paid = f"D{t}-2"
    await import_file(client, stack, to_csv([row(paid, f"stu2-{t}")]))
    refused = await client.http.post(url, json={**body, "order_id": paid}, headers=APPROVER)
    assert refused.status_code == 409, refused.text


async def test_import_is_for_the_importer_and_unreadable_files_store_nothing(client: PlatformClient,
                                                                            stack: Any) -> None:
    t = tag()
    body = to_csv([row(f"F{t}-1", f"stu-{t}")])
    denied = await import_file(client, stack, body, headers=APPROVER)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    missing_column = b"order_id,amount\nX1,100\n"
    r = await import_file(client, stack, missing_column)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_export"
    assert r.json()["error"]["details"]["file_errors"][0]["scope"] == "file"
    r = await import_file(client, stack, body, "image/png")
    assert r.status_code == 422
    assert await stream_events(stack.pg_dsn, [f"kolable-F{t}-1"]) == []


async def test_the_reconciler_marks_results_and_the_order_view_shows_them(client: PlatformClient,
                                                                         stack: Any) -> None:
    t = tag()
    oid = f"M{t}-1"
    await import_file(client, stack, to_csv([row(oid, f"stu-{t}", status="refunded",
                                                 refunded_at="2025-05-14T15:00:00+08:00")]))
    payments = stack.url("payments")
    url = f"{payments}/kolable/orders/{oid}/marks"
    note = {"note": "學員表示課綱升級後不想上,已退刷 (refund reason confirmed with the student on LINE)"}
    before = await stream_events(stack.pg_dsn, [f"kolable-{oid}"])
    for who in (APPROVER, IMPORTER):
        denied = await client.http.post(url, json=note, headers=who)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    empty = await client.http.post(url, json={"note": ""}, headers=RECONCILER)
    assert empty.status_code == 422 and "note" in empty.text
    assert await stream_events(stack.pg_dsn, [f"kolable-{oid}"]) == before
    unknown = await client.http.post(f"{payments}/kolable/orders/nope-{t}/marks", json=note, headers=RECONCILER)
    assert unknown.status_code == 404

    ok = await client.http.post(url, json=note, headers=RECONCILER)
    assert ok.status_code == 200, ok.text
    assert ok.json()["mark"]["status_at_mark"] == "refunded_no_rebuy" and ok.json()["mark"]["actor"] == "huber"
    view = (await client.http.get(f"{payments}/kolable/orders/{oid}")).json()
    assert view["status"] == "refunded_no_rebuy" and view["marks"][0]["note"] == note["note"]
    assert view["export_row"]["order_id"] == oid and view["classification"]["next_step_zh"].startswith("Huber")
    assert (await client.http.get(f"{payments}/kolable/orders/nope-{t}")).status_code == 404
