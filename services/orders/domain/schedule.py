"""The StaffSchedule aggregate: one staff member's held slots on one local day.

Stream `schedule-{staff_id}-{YYYY-MM-DD}` (the day in the policy's time zone). One stream
per staff-day keeps the double-booking check inside one aggregate, so optimistic
concurrency on that stream is what stops two orders taking the same time (seed 二: paying
holds the staff member's time, 付款過程中會占用庫存).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from libs.domain.aggregate import Aggregate
from libs.domain.errors import Conflict, RuleViolation
from libs.domain.events import DomainEvent
from services.orders.domain.events import Slot, SlotHeld, SlotReleased

__all__ = ["Hold", "StaffSchedule", "schedule_stream_key"]


def _tz(tz: str | ZoneInfo) -> ZoneInfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def schedule_stream_key(staff_id: str, start: datetime, tz: str | ZoneInfo) -> str:
    """The aggregate id `{staff_id}-{YYYY-MM-DD}` of the schedule holding a slot starting at `start`."""
    return f"{staff_id}-{start.astimezone(_tz(tz)).date().isoformat()}"


@dataclass(frozen=True, slots=True)
class Hold:
    """An active hold: the order and its half-open interval [start, end)."""

    order_id: str
    start: datetime
    end: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Half-open intervals: a slot ending at 10:00 and one starting at 10:00 do not overlap."""
        return self.start < end and start < self.end


class StaffSchedule(Aggregate):
    """Held slots of one staff member on one local day."""

    category = "schedule"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        # The id ends in the ISO day; staff ids may contain '-', so split from the right.
        staff_id, day = aggregate_id[:-11], aggregate_id[-10:]
        if aggregate_id[-11:-10] != "-" or not staff_id:
            raise ValueError(f"schedule id must be '<staff_id>-<YYYY-MM-DD>', got {aggregate_id!r}")
        self.staff_id = staff_id
        self.day = date.fromisoformat(day)
        self.holds: dict[str, Hold] = {}

    @classmethod
    def for_slot(cls, staff_id: str, start: datetime, tz: str | ZoneInfo) -> StaffSchedule:
        """An empty schedule for the staff-day of `start` (load its events with rehydrate instead)."""
        return cls(schedule_stream_key(staff_id, start, tz))

    def allowed_commands(self) -> list[str]:
        """Both commands are always allowed; hold may still be refused by a Conflict."""
        return ["hold", "release"]

    def hold(self, order_id: str, slot: Slot, at: datetime, tz: str | ZoneInfo) -> None:
        """Hold the slot for an order; Conflict if it overlaps another order's hold."""
        if slot.start.astimezone(_tz(tz)).date() != self.day:
            raise RuleViolation("slot.start", f"is not on {self.day.isoformat()}, the day of this schedule")
        if slot.end <= slot.start:
            raise RuleViolation("slot.end", "must be after slot.start")
        existing = self.holds.get(order_id)
        if existing is not None:
            if (existing.start, existing.end) == (slot.start, slot.end):
                return  # a retried hold for the same order is a no-op
            raise Conflict(f"order {order_id} already holds {existing.start:%H:%M}-{existing.end:%H:%M} "
                           f"with staff {self.staff_id}; release it first", order_id=order_id)
        for other in self.holds.values():
            if other.overlaps(slot.start, slot.end):
                local = _tz(tz)
                raise Conflict(
                    f"staff {self.staff_id} is already booked {other.start.astimezone(local):%H:%M}-"
                    f"{other.end.astimezone(local):%H:%M} on {self.day.isoformat()}",
                    staff_id=self.staff_id, held_start=other.start.isoformat(),
                    held_end=other.end.isoformat())
        self._record(SlotHeld(staff_id=self.staff_id, day=self.day, order_id=order_id,
                              start=slot.start, end=slot.end, at=at))

    def release(self, order_id: str, reason: str, at: datetime) -> None:
        """Free the order's slot; releasing a slot that is not held is a no-op."""
        if order_id not in self.holds:
            return
        self._record(SlotReleased(staff_id=self.staff_id, day=self.day, order_id=order_id,
                                  reason=reason, at=at))

    def apply(self, event: DomainEvent) -> None:
        """Evolve the state by one event; no checks here."""
        match event:
            case SlotHeld():
                self.holds[event.order_id] = Hold(event.order_id, event.start, event.end)
            case SlotReleased():
                self.holds.pop(event.order_id, None)
            case _:
                raise TypeError(f"StaffSchedule cannot apply {type(event).__name__}")
