"""The daily schedule, the discrepancy lifecycle and the report page (no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from libs.domain.errors import InvalidTransition, RuleViolation
from services.projector.application.report_html import render_report
from services.projector.application.schedule import next_due, parse_at, run_id_for
from services.projector.bootstrap import ProjectorSettings
from services.projector.domain.reconciliation import (
    Discrepancy,
    DiscrepancyAcknowledged,
    DiscrepancyReopened,
    DiscrepancyResolved,
    Forbidden,
    discrepancy_id,
)

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = datetime(2025, 3, 10, 1, 0, tzinfo=UTC)  # 09:00 in Taipei


@pytest.mark.parametrize("text, expected", [("03:00", time(3, 0)), ("23:59:30", time(23, 59, 30)),
                                            (" 07:05 ", time(7, 5))])
def test_the_time_of_day_is_hh_mm(text: str, expected: time) -> None:
    assert parse_at(text) == expected


@pytest.mark.parametrize("text", ["3:00", "24:00", "03:60", "0300", "03:00:00:00", "noon"])
def test_a_bad_time_of_day_is_refused_by_the_settings(text: str) -> None:
    with pytest.raises(ValueError):
        parse_at(text)
    with pytest.raises(ValueError, match="reconcile_at"):
        ProjectorSettings(reconcile_at=text)
    with pytest.raises(ValueError, match="reconcile_timezone"):
        ProjectorSettings(reconcile_timezone="Mars/Olympus")


def test_the_next_run_is_the_next_local_03_00() -> None:
    due = next_due(NOW, time(3, 0), TAIPEI)
    assert due == datetime(2025, 3, 11, 3, 0, tzinfo=TAIPEI)  # 09:00 today is past 03:00: tomorrow
    assert next_due(NOW, time(9, 0), TAIPEI) == NOW  # exactly now counts as due now
    assert next_due(NOW, time(10, 0), TAIPEI) == datetime(2025, 3, 10, 10, 0, tzinfo=TAIPEI)
    assert run_id_for(due, TAIPEI) == "daily-20250311"
    # 23:30 UTC on the 10th is 07:30 on the 11th in Taipei: the run is named by the local day.
    assert run_id_for(datetime(2025, 3, 10, 23, 30, tzinfo=UTC), TAIPEI) == "daily-20250311"


def test_a_discrepancy_goes_open_acknowledged_resolved_with_who_and_why() -> None:
    d = Discrepancy.open("read_model_drift", "rm_orders:o-1", run_id="r-1", summary="differs", order_id="o-1",
                         at=NOW)
    assert d.id == discrepancy_id("read_model_drift", "rm_orders:o-1") == Discrepancy.open(
        "read_model_drift", "rm_orders:o-1", run_id="r-2", summary="again", order_id=None, at=NOW).id
    assert d.id != discrepancy_id("read_model_drift", "rm_orders:o-2")
    d.mark_saved()
    with pytest.raises(InvalidTransition):
        d.resolve("louis", "approver", "fixed", NOW)  # acknowledged first
    with pytest.raises(Forbidden, match="approver or reconciler"):
        d.acknowledge("cust", "customer", "mine", NOW)
    with pytest.raises(RuleViolation, match="reason"):
        d.acknowledge("huber", "reconciler", "  ", NOW)
    assert d.found_again("r-2", "still there", NOW) is False  # open: its lifecycle goes on
    d.acknowledge("huber", "reconciler", "looking into the consumer's dead letters", NOW)
    with pytest.raises(Forbidden, match="approver"):
        d.resolve("huber", "reconciler", "fixed", NOW)
    d.resolve("louis", "approver", "repaired by the swap of run r-3", NOW)
    ack, res = d.pending
    assert isinstance(ack, DiscrepancyAcknowledged) and (ack.by, ack.role) == ("huber", "reconciler")
    assert isinstance(res, DiscrepancyResolved) and res.reason == "repaired by the swap of run r-3"
    d.mark_saved()
    assert d.found_again("r-4", "back", NOW) is True
    assert isinstance(d.pending[-1], DiscrepancyReopened) and d.allowed_commands() == ["acknowledge"]


def test_the_report_page_shows_what_the_json_says() -> None:
    report = {
        "run_id": "r-1", "trigger": "cli", "requested_by": "huber", "requested_role": "reconciler", "repair": False,
        "started_at": "2025-03-10T01:00:00+00:00", "finished_at": "2025-03-10T01:01:00+00:00",
        "duration_seconds": 60.0, "store": {"events": 10, "events_replayed": 9, "head_position": 10},
        "phases": {"replaying": 1.0}, "tables": [{"table": "rm_orders", "live": 1, "replayed": 1, "drifts": 1}],
        "services": [], "repaired": None,
        "totals": {"discrepancies": 2, "new": 2, "by_kind": {"duplicate_shipment": 1, "read_model_drift": 1}},
        "discrepancies": [
            {"discrepancy_id": "d-aaa", "kind": "read_model_drift", "category": "read_model", "key": "rm_orders:o-1",
             "order_id": "o-1", "summary": "rm_orders row o-1 <differs>", "details": {"columns": ["status"]},
             "status": "open", "new": True, "reopened": False},
            {"discrepancy_id": "d-bbb", "kind": "duplicate_shipment", "category": "shipping", "key": "rma:r:ship",
             "order_id": None, "summary": "2 parcels", "details": {}, "status": "open", "new": True,
             "reopened": False}],
    }
    page = render_report(report, "f" * 64)
    assert re.findall(r'<tr class="discrepancy" id="(d-[a-z]+)"', page) == ["d-aaa", "d-bbb"]
    assert '<div class="metric bad" id="total-discrepancies">2</div>' in page
    assert "&lt;differs&gt;" in page and "<differs>" not in page  # escaped
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
