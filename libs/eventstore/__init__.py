"""Event store on PostgreSQL: the single source of truth. See store.py for guarantees."""

from libs.eventstore.errors import (
    DATABASE_ERRORS,
    DATABASE_UNAVAILABLE,
    DuplicateEventId,
    EventStoreError,
    IdempotencyKeyReused,
    WrongExpectedVersion,
)
from libs.eventstore.ids import uuid7
from libs.eventstore.model import (
    ANY_VERSION,
    GENESIS_HASH,
    NO_STREAM,
    START,
    AppendResult,
    Cursor,
    Metadata,
    NewEvent,
    RecordedEvent,
)
from libs.eventstore.store import EventStore, Finding, create_pool

__all__ = [
    "ANY_VERSION", "DATABASE_ERRORS", "DATABASE_UNAVAILABLE", "GENESIS_HASH", "NO_STREAM", "START", "AppendResult",
    "Cursor",
    "DuplicateEventId",
    "EventStore", "EventStoreError", "Finding", "IdempotencyKeyReused", "Metadata", "NewEvent",
    "RecordedEvent", "WrongExpectedVersion", "create_pool", "uuid7",
]
