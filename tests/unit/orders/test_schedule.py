"""Staff schedule: one stream per staff-day, no double booking, idempotent holds."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from libs.domain.errors import Conflict, RuleViolation
from services.orders.domain import events as ev
from services.orders.domain.events import Slot
from services.orders.domain.schedule import StaffSchedule, schedule_stream_key
from tests.unit.orders import NOW, TZ


def slot(h1: int, m1: int, h2: int, m2: int, day: int = 11) -> Slot:
    return Slot(start=datetime(2025, 3, day, h1, m1, tzinfo=TZ), end=datetime(2025, 3, day, h2, m2, tzinfo=TZ))


def schedule_with(*holds: tuple[str, Slot]) -> StaffSchedule:
    schedule = StaffSchedule.for_slot("s-1", holds[0][1].start if holds else slot(9, 0, 10, 0).start, "Asia/Taipei")
    for order_id, held in holds:
        schedule.hold(order_id, held, NOW, "Asia/Taipei")
    schedule.mark_saved()
    return schedule


def test_stream_key_uses_the_local_day_of_the_start() -> None:
    # 17:00 UTC on 10 March is 01:00 on 11 March in Taipei.
    start = datetime(2025, 3, 10, 17, 0, tzinfo=UTC)
    assert schedule_stream_key("s-1", start, "Asia/Taipei") == "s-1-2025-03-11"
    assert schedule_stream_key("s-1", start, "UTC") == "s-1-2025-03-10"
    assert StaffSchedule.stream_id_for("s-1-2025-03-11") == "schedule-s-1-2025-03-11"


def test_staff_ids_with_dashes_survive_the_id() -> None:
    schedule = StaffSchedule("staff-north-7-2025-03-11")
    assert (schedule.staff_id, schedule.day) == ("staff-north-7", date(2025, 3, 11))
    with pytest.raises(ValueError):
        StaffSchedule("2025-03-11")


@pytest.mark.parametrize("held, wanted", [
    (slot(14, 0, 16, 0), slot(15, 0, 17, 0)),
    (slot(14, 0, 16, 0), slot(13, 0, 14, 1)),
    (slot(14, 0, 16, 0), slot(14, 30, 15, 0)),
    (slot(14, 0, 16, 0), slot(13, 0, 17, 0)),
    (slot(14, 0, 16, 0), slot(14, 0, 16, 0)),
], ids=["tail", "head", "inside", "around", "same"])
def test_overlapping_hold_is_a_conflict(held: Slot, wanted: Slot) -> None:
    schedule = schedule_with(("o-1", held))
    with pytest.raises(Conflict) as caught:
        schedule.hold("o-2", wanted, NOW, "Asia/Taipei")
    assert "14:00-16:00" in caught.value.message
    assert schedule.pending == [] and set(schedule.holds) == {"o-1"}


@pytest.mark.parametrize("wanted", [slot(16, 0, 18, 0), slot(12, 0, 14, 0)], ids=["after", "before"])
def test_back_to_back_slots_are_fine(wanted: Slot) -> None:
    schedule = schedule_with(("o-1", slot(14, 0, 16, 0)))
    schedule.hold("o-2", wanted, NOW, "Asia/Taipei")
    [held] = schedule.pending
    assert isinstance(held, ev.SlotHeld)
    assert (held.staff_id, held.day, held.order_id) == ("s-1", date(2025, 3, 11), "o-2")


def test_holding_again_for_the_same_order_is_a_no_op_but_another_slot_is_a_conflict() -> None:
    schedule = schedule_with(("o-1", slot(14, 0, 16, 0)))
    schedule.hold("o-1", slot(14, 0, 16, 0), NOW, "Asia/Taipei")
    assert schedule.pending == []
    with pytest.raises(Conflict):
        schedule.hold("o-1", slot(17, 0, 18, 0), NOW, "Asia/Taipei")


def test_release_frees_the_slot_and_unknown_release_is_a_no_op() -> None:
    schedule = schedule_with(("o-1", slot(14, 0, 16, 0)))
    schedule.release("o-unknown", "cancelled", NOW)
    assert schedule.pending == []
    schedule.release("o-1", "order cancelled", NOW)
    [released] = schedule.pending
    assert isinstance(released, ev.SlotReleased) and released.order_id == "o-1"
    schedule.release("o-1", "order cancelled", NOW)
    assert len(schedule.pending) == 1
    schedule.hold("o-2", slot(14, 0, 16, 0), NOW, "Asia/Taipei")
    assert set(schedule.holds) == {"o-2"}


def test_a_slot_on_another_day_is_refused() -> None:
    schedule = schedule_with(("o-1", slot(14, 0, 16, 0)))
    with pytest.raises(RuleViolation) as caught:
        schedule.hold("o-2", slot(14, 0, 16, 0, day=12), NOW, "Asia/Taipei")
    assert caught.value.field == "slot.start"
