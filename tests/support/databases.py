"""A database of its own on the session's PostgreSQL, for tests that check the *whole* store
(a replay, `closeloop verify`) and so must not see other tests' events."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest


def with_database(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` instead."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def fresh_database(dsn: str, prefix: str) -> AsyncIterator[str]:
    """Create an empty database named `<prefix>_<random>` and yield its DSN; drop it afterwards
    (WITH FORCE: a process that was killed may not have closed its connections yet). Skips the test
    when the user may not create databases."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn)
    try:
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.InsufficientPrivilegeError:
            pytest.skip("the test database user may not CREATE DATABASE")
        try:
            yield with_database(dsn, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
