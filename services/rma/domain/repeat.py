"""Repeat failures (seed 001, cases 2 and 10): a unit that comes back again.

A new RMA for serial S repeats an earlier RMA E when
- E was for the same serial (the same unit failed again: `same_serial`), or
- E shipped a replacement unit whose serial is S (`replacement_unit`: the replacement failed),
and E was not cancelled (a rejected RMA still reported a real failure). The most recent such RMA is
the `previous` one; all of them are listed. There is no time window: quality follow-up wants every
return, and the number of days since the previous one is recorded instead.

An RMA for a serial that still has an open RMA is not a repeat but a duplicate: it is refused
(`open_rma_for_serial`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from services.rma.domain.events import RepeatKind, RmaStatus

FINAL = frozenset({RmaStatus.CLOSED, RmaStatus.REJECTED, RmaStatus.CANCELLED})


@dataclass(frozen=True)
class PriorRma:
    rma_id: str
    serial: str
    sku: str
    fault_code: str
    status: RmaStatus
    opened_at: datetime
    replacement_serial: str | None = None


@dataclass(frozen=True)
class RepeatFinding:
    kind: RepeatKind
    previous: PriorRma
    earlier: list[PriorRma]
    days_since_previous: int


def open_rma_for_serial(serial: str, earlier: Iterable[PriorRma]) -> PriorRma | None:
    """An RMA for this serial that is still open (not closed, rejected or cancelled)."""
    return next((p for p in earlier if p.serial == serial and p.status not in FINAL), None)


def find_repeat_failure(serial: str, earlier: Iterable[PriorRma], at: datetime) -> RepeatFinding | None:
    """The repeat failure a new RMA for `serial` opened at `at` is, if any (see the module docstring)."""
    matches = [p for p in earlier if p.status is not RmaStatus.CANCELLED and p.opened_at <= at
               and (p.serial == serial or p.replacement_serial == serial)]
    if not matches:
        return None
    matches.sort(key=lambda p: (p.opened_at, p.rma_id))
    previous = matches[-1]
    kind = RepeatKind.REPLACEMENT_UNIT if previous.replacement_serial == serial else RepeatKind.SAME_SERIAL
    return RepeatFinding(kind=kind, previous=previous, earlier=matches,
                         days_since_previous=max((at - previous.opened_at).days, 0))
