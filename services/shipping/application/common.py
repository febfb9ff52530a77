"""What the shipping use cases share: who may act, and a read-model uniqueness clash turned into a
retryable concurrency conflict."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import asyncpg

from libs.domain.errors import RuleViolation
from libs.eventstore import WrongExpectedVersion


class Forbidden(RuleViolation):
    """The actor's role may not do this (HTTP 403)."""

    code = "forbidden"


def require_role(role: str, roles: Iterable[str], action: str) -> None:
    allowed = sorted(set(roles))
    if role not in allowed:
        raise Forbidden("X-Role", f"only the {' or '.join(allowed)} role may {action}; the role is {role!r}")


@contextlib.asynccontextmanager
async def clash_is_a_conflict(stream_id: str, constraints: Iterable[str]) -> AsyncIterator[None]:
    """A read-model row another transaction committed first under one of `constraints` means that
    transaction created the same thing: roll back and run again (like a lost append), and the
    re-run finds it."""
    names = set(constraints)
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name in names:
            raise WrongExpectedVersion(stream_id, 0, None) from exc
        raise


async def lock_subject(conn: asyncpg.Connection, kind: str, subject_id: str, action: str) -> None:
    """Serialise, until the end of the transaction, everything that ships or records a parcel for one
    (subject, action): closeloop's shipment and the manifest rows that may duplicate it."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"shipping-subject\n{kind}\n{subject_id}\n{action}")
