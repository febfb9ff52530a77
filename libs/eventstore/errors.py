"""Typed errors of the event store. Nothing is stored when one is raised."""

from __future__ import annotations

import asyncio

import asyncpg

# The database is away, restarting or cut us off, or left a pooled connection half-broken (asyncpg
# reports "cannot switch to state ...; another operation is in progress" on a connection whose server
# went away mid-operation): nothing of the operation can be assumed stored; retrying it later (with the
# same Idempotency-Key) is the answer. The APIs map these to 503 with Retry-After (libs/http/errors.py).
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,  # waiting for a pooled connection or a reply
    asyncpg.PostgresConnectionError,  # incl. ConnectionDoesNotExistError
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress"
    asyncpg.exceptions.InternalClientError,  # a connection left mid-operation by the server
    asyncpg.exceptions.CannotConnectNowError,  # starting up / shutting down
    asyncpg.exceptions.OperatorInterventionError,  # terminating connection due to administrator command
    asyncpg.exceptions.TooManyConnectionsError,
)

# What a background loop (timers, the notification dispatcher, the relay's LISTEN, read-your-writes, the
# followers' wake-up) logs and retries instead of dying: any error of the database or of the connection
# to it. A half-broken connection raises InternalClientError, which is neither a PostgresError nor an
# InterfaceError: a loop catching only those died in the database-outage chaos test (notifications' timers).
DATABASE_ERRORS: tuple[type[Exception], ...] = (asyncpg.PostgresError, *DATABASE_UNAVAILABLE)


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
