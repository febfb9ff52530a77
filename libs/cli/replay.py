"""Replaying one stream with the service's own aggregate class: each stored event and the state
after it, and the state at a moment.

The moment rule (`state --as-of T`, `replay --as-of T`): the state is that of the stream's events
recorded at or before T, where "recorded" is `events.recorded_at`, the insert time the event store
takes with clock_timestamp() on the database server when closeloop_append writes the row. It is
neither the commit time nor any business time inside the event's data (placed_at, at, ...). The
events taken are the stream's leading run with recorded_at <= T (a stream's versions are inserted
in order, so this is the same set as a filter on recorded_at, and stays a prefix of the stream
even if the server clock ever stepped back). An event inserted at or before T by a transaction that
commits after T is included once it has committed: `--as-of T` is stable for any T older than the
longest-running write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

import services.registry  # noqa: F401  (registers every event model for decoding)
from libs.cli.aggregates import AggregateType, aggregate_for, describe
from libs.cli.jsonable import state_of, to_jsonable
from libs.domain.aggregate import Aggregate
from libs.domain.events import UnknownEventType, UnsupportedSchemaVersion, registry
from libs.eventstore import RecordedEvent

WHY_FIELDS = ("reason", "reason_code", "close_reason", "resolution", "note")


def why_of(e: RecordedEvent) -> tuple[str | None, str | None]:
    """(why, from where): the reason the command gave (metadata.reason, from X-Reason or the
    reacting service), else the event's own reason field, if it has one."""
    if e.metadata.get("reason"):
        return str(e.metadata["reason"]), "metadata.reason"
    for name in WHY_FIELDS:
        value = e.data.get(name)
        if isinstance(value, str) and value:
            return value, f"data.{name}"
    return None, None


def event_view(e: RecordedEvent) -> dict[str, Any]:
    """What an auditor sees of one stored event: where it is, who did it, in which role and why."""
    m = e.metadata
    why, why_from = why_of(e)
    return {
        "global_position": e.global_position, "transaction_id": e.transaction_id, "stream_id": e.stream_id,
        "stream_version": e.stream_version, "event_id": str(e.event_id), "event_type": e.event_type,
        "schema_version": e.schema_version, "recorded_at": e.recorded_at.isoformat(),
        "actor": m.get("actor"), "role": m.get("role"), "reason": m.get("reason"),
        "correlation_id": m.get("correlation_id"), "causation_id": m.get("causation_id"),
        "why": why, "why_from": why_from, "data": to_jsonable(e.data),
    }


@dataclass
class Step:
    event: RecordedEvent
    state: dict[str, Any] | None  # None: events only, or the state could not be rebuilt up to here
    changed: list[str] = field(default_factory=list)  # top-level state attributes this event changed
    error: str | None = None  # why this event could not be applied

    def to_json(self) -> dict[str, Any]:
        out = event_view(self.event)
        out["state"] = self.state
        out["changed"] = self.changed
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Replay:
    stream_id: str
    aggregate: AggregateType | None
    shown_by: str  # which class rebuilds the state, or why events only
    steps: list[Step]
    error: str | None = None  # the aggregate could not be created at all

    @property
    def state(self) -> dict[str, Any] | None:
        return self.steps[-1].state if self.steps else self.initial_state

    initial_state: dict[str, Any] | None = None


def events_as_of(events: list[RecordedEvent], as_of: datetime | None) -> list[RecordedEvent]:
    """The stream's leading events recorded at or before `as_of` (all of them without one)."""
    if as_of is None:
        return events
    out = []
    for e in events:
        if e.recorded_at > as_of:
            break
        out.append(e)
    return out


def replay(stream_id: str, events: list[RecordedEvent]) -> Replay:
    """Apply `events` (one stream's, in version order) one by one to a fresh aggregate of the
    class that owns the stream, keeping the state after each. An event that cannot be decoded
    or applied is reported on its step; the state after it is unknown (None) from there on."""
    cls, aggregate_id = aggregate_for(stream_id)
    if cls is None:
        return Replay(stream_id, None, describe(stream_id), [Step(e, None) for e in events])
    try:
        agg: Aggregate | None = cls(aggregate_id)
    except Exception as exc:  # e.g. a schedule id that is not '<staff>-<YYYY-MM-DD>'
        return Replay(stream_id, cls, describe(stream_id), [Step(e, None) for e in events],
                      error=f"{cls.__name__}({aggregate_id!r}) could not be created: {type(exc).__name__}: {exc}")
    assert agg is not None
    result = Replay(stream_id, cls, describe(stream_id), [], initial_state=state_of(agg))
    previous = result.initial_state or {}
    for e in events:
        if agg is None:
            result.steps.append(Step(e, None, error="not applied: an earlier event could not be applied"))
            continue
        try:
            decoded = registry.decode(e.event_type, e.schema_version, e.data)
        except (UnknownEventType, UnsupportedSchemaVersion, ValidationError) as exc:
            result.steps.append(Step(e, None, error=f"cannot decode: {type(exc).__name__}: {exc}"))
            agg = None
            continue
        try:
            agg.apply(decoded)
            agg.version += 1
        except Exception as exc:
            result.steps.append(Step(e, None, error=f"{cls.__name__}.apply failed: {type(exc).__name__}: {exc}"))
            agg = None
            continue
        state = state_of(agg)
        changed = [k for k in state if k != "version" and state.get(k) != previous.get(k)]
        result.steps.append(Step(e, state, changed))
        previous = state
    return result
