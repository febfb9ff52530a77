"""Value types of the event store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from libs.eventstore.ids import uuid7

GENESIS_HASH = "0" * 64

# expected_version values for append()
ANY_VERSION: int | None = None  # no concurrency check
NO_STREAM = 0  # the stream must not exist yet


@dataclass(frozen=True, slots=True)
class Metadata:
    """Who did it and why. Stored with every event (plus recorded_at and schema_version,
    which the store sets itself)."""

    actor: str
    role: str
    correlation_id: str
    causation_id: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"actor": self.actor, "role": self.role, "correlation_id": self.correlation_id,
                               "causation_id": self.causation_id}
        if self.reason:
            out["reason"] = self.reason
        if self.extra:
            out.update(self.extra)
        return out

    def caused_by(self, event: RecordedEvent, *, actor: str | None = None, role: str | None = None) -> Metadata:
        """Metadata for an event written in reaction to `event` (same correlation)."""
        return Metadata(actor=actor or self.actor, role=role or self.role,
                        correlation_id=str(event.metadata.get("correlation_id") or event.event_id),
                        causation_id=str(event.event_id))


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_type: str
    data: dict[str, Any]
    metadata: Metadata
    schema_version: int = 1
    event_id: UUID = field(default_factory=uuid7)

    def to_json(self) -> dict[str, Any]:
        return {"event_id": str(self.event_id), "event_type": self.event_type,
                "schema_version": self.schema_version, "data": self.data, "metadata": self.metadata.to_json()}


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A follower's position: events are delivered in (transaction_id, global_position) order."""

    transaction_id: int = 0
    global_position: int = 0

    def __str__(self) -> str:
        return f"{self.transaction_id}:{self.global_position}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        tx, _, pos = text.partition(":")
        return cls(int(tx), int(pos))


START = Cursor(0, 0)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    global_position: int
    transaction_id: int
    event_id: UUID
    stream_id: str
    stream_version: int
    event_type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime
    prev_hash: str
    hash: str

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.transaction_id, self.global_position)

    @property
    def category(self) -> str:
        return self.stream_id.split("-", 1)[0]


@dataclass(frozen=True, slots=True)
class AppendResult:
    stream_id: str
    first_version: int
    last_version: int
    global_positions: list[int]
    event_ids: list[UUID]
    transaction_id: int
    replayed: bool = False

    @property
    def next_expected_version(self) -> int:
        return self.last_version
