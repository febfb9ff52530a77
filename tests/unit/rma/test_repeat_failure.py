"""Repeat failures (seed 001, cases 2 and 10): the same serial again, or an earlier RMA's replacement
unit failing, is flagged for quality follow-up; a serial with an open RMA cannot get a second one."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.rma.domain.events import RepeatKind, RmaStatus
from services.rma.domain.repeat import PriorRma, find_repeat_failure, open_rma_for_serial
from tests.unit.rma import NOW, OLD, opened

YEAR = timedelta(days=365)


def prior(rma_id: str, serial: str, status: RmaStatus = RmaStatus.CLOSED, *, ago: timedelta = YEAR,
          replacement: str | None = None) -> PriorRma:
    return PriorRma(rma_id=rma_id, serial=serial, sku=OLD, fault_code="left_button.double_click", status=status,
                    opened_at=NOW - ago, replacement_serial=replacement)


RULES = [
    pytest.param([], None, None, id="first RMA of the unit: no flag"),
    pytest.param([prior("r1", "SN-1")], RepeatKind.SAME_SERIAL, "r1", id="the same serial again"),
    pytest.param([prior("r1", "SN-0", replacement="SN-1")], RepeatKind.REPLACEMENT_UNIT, "r1",
                 id="the replacement shipped by an earlier RMA fails"),
    pytest.param([prior("r1", "SN-1", RmaStatus.REJECTED)], RepeatKind.SAME_SERIAL, "r1",
                 id="an earlier rejected RMA still reported a failure"),
    pytest.param([prior("r1", "SN-1", RmaStatus.CANCELLED)], None, None, id="an earlier cancelled RMA: no flag"),
    pytest.param([prior("r1", "SN-2"), prior("r2", "SN-3", replacement="SN-4")], None, None,
                 id="other units: no flag"),
    pytest.param([prior("r1", "SN-0", ago=2 * YEAR, replacement="SN-X"), prior("r2", "SN-X", replacement="SN-1")],
                 RepeatKind.REPLACEMENT_UNIT, "r2", id="a chain: the latest replacement is the previous RMA"),
    pytest.param([prior("r1", "SN-1", ago=2 * YEAR), prior("r2", "SN-1")], RepeatKind.SAME_SERIAL, "r2",
                 id="several: the most recent is the previous one"),
]


@pytest.mark.parametrize(("earlier", "kind", "previous"), RULES)
def test_repeat_failure_rules(earlier: list[PriorRma], kind: RepeatKind | None, previous: str | None) -> None:
    finding = find_repeat_failure("SN-1", earlier, NOW)
    if kind is None:
        assert finding is None
        return
    assert finding is not None
    assert (finding.kind, finding.previous.rma_id) == (kind, previous)
    assert finding.days_since_previous == (NOW - finding.previous.opened_at).days


def test_every_earlier_rma_of_the_unit_is_listed_oldest_first() -> None:
    earlier = [prior("r2", "SN-1"), prior("r1", "SN-1", ago=2 * YEAR), prior("r0", "SN-1", RmaStatus.CANCELLED)]
    finding = find_repeat_failure("SN-1", earlier, NOW)
    assert finding is not None and [e.rma_id for e in finding.earlier] == ["r1", "r2"]


def test_the_flag_is_recorded_on_the_new_rma_with_the_previous_one() -> None:
    finding = find_repeat_failure("SN-1", [prior("r1", "SN-0", replacement="SN-1")], NOW)
    assert finding is not None
    rma = opened(serial="SN-1")
    rma.flag_repeat_failure(finding, NOW)
    [event] = rma.pending
    assert event.event_type == "RmaRepeatFailureFlagged"
    assert rma.repeat is not None and rma.repeat.kind is RepeatKind.REPLACEMENT_UNIT
    flag = rma.repeat
    assert (flag.previous_rma_id, flag.days_since_previous, flag.earlier_rma_ids) == ("r1", 365, ["r1"])


@pytest.mark.parametrize("status", [s for s in RmaStatus])
def test_only_an_open_rma_blocks_a_new_one_for_the_serial(status: RmaStatus) -> None:
    found = open_rma_for_serial("SN-1", [prior("r1", "SN-1", status)])
    is_open = status not in (RmaStatus.CLOSED, RmaStatus.REJECTED, RmaStatus.CANCELLED)
    assert (found is not None) is is_open
    # The replacement unit of an open RMA is another serial: it does not block.
    assert open_rma_for_serial("SN-1", [prior("r1", "SN-0", status, replacement="SN-1")]) is None
