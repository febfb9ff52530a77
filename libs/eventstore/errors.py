"""Typed errors of the event store. Nothing is stored when one is raised."""

from __future__ import annotations


class EventStoreError(Exception):
    pass


class WrongExpectedVersion(EventStoreError):
    """Optimistic concurrency conflict: the stream is not at the version the writer read.

    Mapped to HTTP 409 by the APIs. `retryable` is True when simply reloading the
    aggregate and re-running the command is the right reaction.
    """

    def __init__(self, stream_id: str, expected: int | None, actual: int | None, retryable: bool = True):
        super().__init__(f"stream {stream_id} is at version {actual}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        self.retryable = retryable


class DuplicateEventId(EventStoreError):
    """An event id that is already stored was appended with different siblings or stream."""


class IdempotencyKeyReused(EventStoreError):
    """An Idempotency-Key was reused with a different request (HTTP 422)."""

    def __init__(self, scope: str, key: str):
        super().__init__(f"Idempotency-Key {key!r} was already used for a different request in {scope}")
        self.scope = scope
        self.key = key
