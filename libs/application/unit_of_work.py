"""Unit of work and command execution for event-sourced aggregates.

`execute()` runs a command function in one PostgreSQL transaction: the function loads
aggregates through the UnitOfWork, calls their command methods, and returns the
response. Pending events of every touched aggregate are appended with the version the
aggregate was loaded at, so a concurrent change makes the append fail
(WrongExpectedVersion). Such a conflict is retried by re-running the whole command on
fresh state, unless the client itself named the version it expects (If-Match), in
which case the conflict is reported (HTTP 409).

With an Idempotency-Key the response is stored in the same transaction; a retry with
the same key returns it without running anything, and a concurrent duplicate that
loses the race rolls back and returns the winner's response.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import orjson

from libs.application import timers
from libs.domain.aggregate import Aggregate
from libs.domain.errors import NotFound
from libs.domain.events import registry
from libs.eventstore import AppendResult, EventStore, Metadata, NewEvent, WrongExpectedVersion

log = logging.getLogger("closeloop.uow")

A = TypeVar("A", bound=Aggregate)
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class CommandContext:
    """Who runs the command and how (from the HTTP request or the triggering event)."""

    actor: str
    role: str
    correlation_id: str
    causation_id: str | None = None
    reason: str | None = None
    idempotency_key: str | None = None
    request_hash: str = ""
    expected_version: int | None = None  # If-Match on the command's main aggregate

    def metadata(self) -> Metadata:
        return Metadata(actor=self.actor, role=self.role, correlation_id=self.correlation_id,
                        causation_id=self.causation_id, reason=self.reason)


def request_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


@dataclass
class CommandResult:
    response: dict[str, Any]
    appended: list[AppendResult] = field(default_factory=list)
    replayed: bool = False

    def version_of(self, stream_id: str) -> int | None:
        for r in self.appended:
            if r.stream_id == stream_id:
                return r.last_version
        return None


class UnitOfWork:
    def __init__(self, store: EventStore, conn: asyncpg.Connection, ctx: CommandContext) -> None:
        self.store = store
        self.conn = conn
        self.ctx = ctx
        self._tracked: dict[str, Aggregate] = {}
        self.appended: list[AppendResult] = []
        # Bookkeeping of application hooks within this unit of work (e.g. how many of an aggregate's
        # pending events a hook has already handled, when it runs more than once).
        self.notes: dict[Any, Any] = {}

    async def load(self, cls: type[A], aggregate_id: str) -> A:
        """The aggregate rebuilt from its stream (version 0 if the stream is empty)."""
        [agg] = await self.load_many([(cls, aggregate_id)])
        return agg  # type: ignore[return-value]

    async def load_many(self, wanted: list[tuple[type[Aggregate], str]]) -> list[Aggregate]:
        """Several aggregates in one query (a command that needs an order, a customer and a
        schedule pays one round trip). Already loaded ones come from this unit of work."""
        missing = [cls.stream_id_for(aid) for cls, aid in wanted if cls.stream_id_for(aid) not in self._tracked]
        if missing:
            streams = await self.store.read_streams(missing, conn=self.conn)
            for cls, aid in wanted:
                sid = cls.stream_id_for(aid)
                if sid in streams and sid not in self._tracked:
                    self._tracked[sid] = cls.rehydrate(
                        aid, (registry.decode(e.event_type, e.schema_version, e.data) for e in streams[sid]))
        return [self._tracked[cls.stream_id_for(aid)] for cls, aid in wanted]

    async def get(self, cls: type[A], aggregate_id: str, *, check_version: bool = False) -> A:
        """Like load(), but NotFound if it does not exist. With check_version, the
        client's If-Match version must equal the stored one."""
        agg = await self.load(cls, aggregate_id)
        if agg.version == 0:
            raise NotFound(f"{cls.__name__.lower()} {aggregate_id} not found", id=aggregate_id)
        if check_version and self.ctx.expected_version is not None and agg.version != self.ctx.expected_version:
            raise WrongExpectedVersion(agg.stream_id, self.ctx.expected_version, agg.version, retryable=False)
        return agg

    def add(self, agg: Aggregate) -> None:
        """Track a new aggregate created by a command."""
        self._tracked[agg.stream_id] = agg

    async def schedule_timer(self, timer_id: str, owner: str, kind: str, stream_id: str, due_at: datetime,
                             payload: dict[str, Any] | None = None) -> None:
        await timers.schedule(self.conn, timer_id, owner, kind, stream_id, due_at, payload or {})

    async def cancel_timer(self, timer_id: str) -> None:
        await timers.cancel(self.conn, timer_id)

    async def flush(self) -> list[AppendResult]:
        """Append the pending events of every touched aggregate, in one round trip."""
        meta = self.ctx.metadata()
        dirty = [agg for agg in self._tracked.values() if agg.pending]
        if not dirty:
            return self.appended
        results = await self.store.append_many(
            [(agg.stream_id, agg.version, [NewEvent(e.event_type, e.to_data(), meta, e.schema_version)
                                           for e in agg.pending]) for agg in dirty],
            conn=self.conn)
        for agg in dirty:
            agg.mark_saved()
        self.appended.extend(results)
        return self.appended


CommandFn = Callable[[UnitOfWork], Awaitable[dict[str, Any]]]


async def execute(store: EventStore, ctx: CommandContext, scope: str, fn: CommandFn) -> CommandResult:
    """Run `fn` in a transaction with retries on concurrency conflicts; see module doc."""
    key = ctx.idempotency_key
    # (A retry with a key is answered from inside the transaction below, after the key's lock: a lookup
    # before it too, as there was, cost every first request with a key one more pooled round trip.)
    attempt = 0
    while True:
        attempt += 1
        try:
            async with store.transaction() as conn:
                if key:
                    # Requests with the same key run one after the other: the second waits here
                    # until the first commits, then finds its response and returns it.
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{scope}\n{key}")
                    stored = await store.idempotent_response(scope, key, ctx.request_hash, conn=conn)
                    if stored is not None:
                        return CommandResult(response=stored, replayed=True)
                uow = UnitOfWork(store, conn, ctx)
                response = await fn(uow)
                await uow.flush()
                if key:
                    await store.save_idempotent_response(conn, scope, key, ctx.request_hash, response)
            return CommandResult(response=response, appended=uow.appended)
        except WrongExpectedVersion as exc:
            if not exc.retryable or ctx.expected_version is not None or attempt >= MAX_ATTEMPTS:
                raise
            log.info("concurrency conflict on %s, retrying (%d)", exc.stream_id, attempt)
        except asyncpg.UniqueViolationError as exc:
            if key and exc.table_name == "idempotency_keys":
                stored = await store.idempotent_response(scope, key, ctx.request_hash)
                if stored is not None:
                    return CommandResult(response=stored, replayed=True)
            raise
