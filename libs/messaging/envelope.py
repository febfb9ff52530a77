"""The Kafka form of a stored event.

Key: the stream id (so one stream always lands on one partition and keeps its order).
Headers: event-type, event-id, global-position, stream-version, schema-version,
correlation_id (FastStream's own correlation header) and causation-id.
Value: the whole envelope as JSON, so a consumer needs nothing but the message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict

from libs.domain.events import DomainEvent
from libs.eventstore.ids import uuid7
from libs.eventstore.model import RecordedEvent

H_EVENT_TYPE = "event-type"
H_EVENT_ID = "event-id"
H_POSITION = "global-position"
H_STREAM_VERSION = "stream-version"
H_SCHEMA_VERSION = "schema-version"
H_CORRELATION = "correlation_id"
H_CAUSATION = "causation-id"


class EventEnvelope(BaseModel):
    """What every `*.events` topic carries: one stored event."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: UUID
    event_type: str
    schema_version: int
    stream_id: str
    stream_version: int
    global_position: int
    transaction_id: int
    recorded_at: AwareDatetime
    data: dict[str, Any]
    metadata: dict[str, Any]

    @classmethod
    def from_recorded(cls, e: RecordedEvent) -> EventEnvelope:
        return cls.model_construct(
            event_id=e.event_id, event_type=e.event_type, schema_version=e.schema_version,
            stream_id=e.stream_id, stream_version=e.stream_version, global_position=e.global_position,
            transaction_id=e.transaction_id, recorded_at=e.recorded_at, data=e.data, metadata=e.metadata)

    @property
    def correlation_id(self) -> str:
        return str(self.metadata.get("correlation_id") or self.event_id)


def encode(e: RecordedEvent) -> tuple[bytes, bytes, dict[str, str]]:
    """(key, value, headers) for one stored event."""
    value = orjson.dumps({
        "event_id": str(e.event_id), "event_type": e.event_type, "schema_version": e.schema_version,
        "stream_id": e.stream_id, "stream_version": e.stream_version, "global_position": e.global_position,
        "transaction_id": e.transaction_id, "recorded_at": e.recorded_at.isoformat(),
        "data": e.data, "metadata": e.metadata,
    }, default=_default)
    headers = {
        H_EVENT_TYPE: e.event_type,
        H_EVENT_ID: str(e.event_id),
        H_POSITION: str(e.global_position),
        H_STREAM_VERSION: str(e.stream_version),
        H_SCHEMA_VERSION: str(e.schema_version),
        H_CORRELATION: str(e.metadata.get("correlation_id") or e.event_id),
        H_CAUSATION: str(e.metadata.get("causation_id") or ""),
    }
    return e.stream_id.encode(), value, headers


def encode_external(event: DomainEvent, *, stream_id: str, stream_version: int, metadata: dict[str, Any],
                    event_id: UUID | None = None) -> tuple[bytes, bytes, dict[str, str]]:
    """(key, value, headers) for a domain event that is published without passing through
    this event store (e.g. by a test or demo standing in for another system)."""
    recorded = RecordedEvent(
        global_position=0, transaction_id=0, event_id=event_id or uuid7(), stream_id=stream_id,
        stream_version=stream_version, event_type=event.event_type, schema_version=event.schema_version,
        data=event.to_data(), metadata={**metadata, "schema_version": event.schema_version},
        recorded_at=datetime.now(UTC), prev_hash="", hash="")
    return encode(recorded)


def decode(value: bytes) -> EventEnvelope:
    return EventEnvelope.model_validate_json(value)


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, UUID):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
