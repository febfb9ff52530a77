"""SLA per stage and the ETA of an RMA (seed 001, case 6).

A subject (an RMA) moves through the clocked stages in this order; the clock of a stage starts when
the subject enters it and stops when it enters any later stage or ends:

| stage       | runs from → to                      | default SLA |
|-------------|-------------------------------------|-------------|
| received    | RECEIVED → ELIGIBLE (or rejected)   | 1 day       |
| eligible    | ELIGIBLE → SHIPPED_IN               | 7 days      |
| shipped_in  | SHIPPED_IN → PROCESSING             | 2 days      |
| processing  | PROCESSING → SHIPPED_OUT            | 3 days      |
| shipped_out | SHIPPED_OUT → Delivered             | 3 days      |

Clocks start at the time the stage was entered (the event's `at`), not when this service happened
to read the event, so an outage of the service does not extend an SLA. A clock still running at its
due time gives one `SlaBreachWarning`.

ETA: when shipped and the carrier gave an ETA, the carrier's; otherwise the current stage's due time
(or now, when it is already late) plus the SLAs of every later stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from libs.domain.aggregate import Aggregate
from libs.domain.events import DomainEvent
from services.notifications.domain.events import (
    SLA_CATEGORY,
    SlaBreachWarning,
    SlaClockStarted,
    SlaClockStopped,
    SlaTrackingEnded,
    SubjectType,
)

STAGES: tuple[str, ...] = ("received", "eligible", "shipped_in", "processing", "shipped_out")
NEXT_STAGE = {"received": "eligible", "eligible": "shipped_in", "shipped_in": "processing",
              "processing": "shipped_out", "shipped_out": "delivered"}
DEFAULT_TABLE = "received=1d,eligible=7d,shipped_in=2d,processing=3d,shipped_out=3d"

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def parse_duration(text: str) -> timedelta:
    """'1d', '36h', '1d12h', '90m', '2.5s'."""
    text = text.strip()
    if not text or _PART.sub("", text):
        raise ValueError(f"{text!r} is not a duration like 1d, 36h, 1d12h, 90m or 30s")
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    if seconds < 1:
        raise ValueError(f"{text!r}: an SLA is at least 1 second")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class SlaPolicy:
    """The SLA of each clocked stage, in stage order."""

    durations: dict[str, timedelta]

    @classmethod
    def parse(cls, text: str) -> SlaPolicy:
        """'stage=duration,...'; stages not named keep their default; an unknown stage is refused."""
        table = dict(_parse_pairs(DEFAULT_TABLE))
        for stage, duration in _parse_pairs(text):
            table[stage] = duration
        return cls({s: table[s] for s in STAGES})

    def sla(self, stage: str) -> timedelta:
        return self.durations[stage]

    def after(self, stage: str) -> timedelta:
        """The SLAs of every stage after `stage`."""
        later = STAGES[STAGES.index(stage) + 1:]
        return sum((self.durations[s] for s in later), timedelta())

    def total(self) -> timedelta:
        return sum(self.durations.values(), timedelta())


def _parse_pairs(text: str) -> list[tuple[str, timedelta]]:
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        stage, sep, duration = part.partition("=")
        stage = stage.strip().lower()
        if not sep:
            raise ValueError(f"{part!r}: expected stage=duration")
        if stage not in STAGES:
            raise ValueError(f"unknown SLA stage {stage!r}; stages: {', '.join(STAGES)}")
        pairs.append((stage, parse_duration(duration)))
    return pairs


@dataclass
class StageClock:
    stage: str
    sla_seconds: int
    started_at: datetime
    due_at: datetime
    stopped_at: datetime | None = None
    late: bool = False
    breached_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def is_late(self, now: datetime) -> bool:
        return self.late or self.breached_at is not None or (self.running and now >= self.due_at)


@dataclass(frozen=True)
class Eta:
    at: datetime | None
    source: Literal["carrier", "sla", "ended"]


@dataclass
class _Changes:
    started: list[StageClock] = field(default_factory=list)
    stopped: list[StageClock] = field(default_factory=list)


def timer_id(subject_id: str, stage: str) -> str:
    return f"sla:{subject_id}:{stage}"


class SlaClock(Aggregate):
    """The SLA clocks of one subject (stream `sla-{subject_id}`)."""

    category = SLA_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.subject_type: SubjectType = "rma"
        self.clocks: dict[str, StageClock] = {}
        self.ended_at: datetime | None = None
        self.end_reason: str | None = None

    # --- commands -------------------------------------------------------------------------------
    def enter(self, stage: str, at: datetime, policy: SlaPolicy, *, subject_type: SubjectType = "rma") -> _Changes:
        """The subject reached `stage` at `at`: stop the clocks of earlier stages, start this one's. Nothing
        happens for a stage already started, for one earlier than a stage already started (a late
        or redelivered event), or after the subject ended."""
        changes = _Changes()
        if stage not in STAGES or self.ended_at is not None:
            return changes
        index = STAGES.index(stage)
        if stage in self.clocks or any(STAGES.index(s) > index for s in self.clocks):
            return changes
        for clock in list(self.clocks.values()):
            if clock.running:
                self._stop(clock, at)
                changes.stopped.append(clock)
        sla = policy.sla(stage)
        self._record(SlaClockStarted(subject_type=subject_type, subject_id=self.id, stage=stage,
                                     sla_seconds=max(1, int(sla.total_seconds())), started_at=at, due_at=at + sla,
                                     at=at))
        changes.started.append(self.clocks[stage])
        return changes

    def end(self, reason: str, at: datetime, *, subject_type: SubjectType = "rma") -> _Changes:
        """The subject is done: stop every running clock; later stages never start."""
        changes = _Changes()
        if self.ended_at is not None:
            return changes
        for clock in list(self.clocks.values()):
            if clock.running:
                self._stop(clock, at)
                changes.stopped.append(clock)
        self._record(SlaTrackingEnded(subject_type=self.subject_type if self.clocks else subject_type,
                                      subject_id=self.id, reason=reason, ended_at=at, at=at))
        return changes

    def warn_if_late(self, stage: str, now: datetime) -> SlaBreachWarning | None:
        """At the due time: one SlaBreachWarning if the stage's clock still runs (idempotent)."""
        clock = self.clocks.get(stage)
        if clock is None or not clock.running or clock.breached_at is not None or now < clock.due_at:
            return None
        warning = SlaBreachWarning(subject_type=self.subject_type, subject_id=self.id, stage=stage,
                                   started_at=clock.started_at, due_at=clock.due_at, at=now)
        self._record(warning)
        return warning

    def _stop(self, clock: StageClock, at: datetime) -> None:
        self._record(SlaClockStopped(subject_type=self.subject_type, subject_id=self.id, stage=clock.stage,
                                     started_at=clock.started_at, due_at=clock.due_at, stopped_at=at,
                                     late=at > clock.due_at, at=at))

    # --- queries --------------------------------------------------------------------------------
    @property
    def current(self) -> StageClock | None:
        """The latest stage entered (running, or stopped when the subject ended)."""
        started = sorted(self.clocks.values(), key=lambda c: STAGES.index(c.stage))
        return started[-1] if started else None

    def eta(self, policy: SlaPolicy, now: datetime, carrier_eta: datetime | None = None) -> Eta:
        if self.ended_at is not None:
            return Eta(None, "ended")
        current = self.current
        if current is not None and current.stage == "shipped_out" and carrier_eta is not None:
            return Eta(carrier_eta, "carrier")
        if current is None:
            return Eta(now + policy.total(), "sla")
        return Eta(max(current.due_at, now) + policy.after(current.stage), "sla")

    def breached(self, now: datetime) -> bool:
        return any(c.is_late(now) for c in self.clocks.values())

    def apply(self, event: DomainEvent) -> None:
        match event:
            case SlaClockStarted():
                self.subject_type = event.subject_type
                self.clocks[event.stage] = StageClock(event.stage, event.sla_seconds, event.started_at, event.due_at)
            case SlaClockStopped():
                clock = self.clocks[event.stage]
                clock.stopped_at = event.stopped_at
                clock.late = event.late
            case SlaBreachWarning():
                self.clocks[event.stage].breached_at = event.at
            case SlaTrackingEnded():
                self.ended_at = event.ended_at
                self.end_reason = event.reason
