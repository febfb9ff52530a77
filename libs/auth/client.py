"""Acting as someone over HTTP, for the development tools (the `make run` demo, `make bench`) and
the tests: `ActorAuth` is an httpx auth that turns the identity a request names in X-Actor /
X-Role into that identity's bearer token, which `ActorTokens` mints on first use through the token
store (so it needs the database and the stack's secret key, like `closeloop tokens create`).

A request that already carries an Authorization header is sent as it is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Generator, Mapping
from datetime import timedelta

import asyncpg
import httpx

from libs.auth.tokens import TokenStore, ensure_schema


class ActorTokens:
    """One token per (actor, role), minted on first use (or taken from `known`) and kept."""

    def __init__(self, dsn: str, secret_key: str, *, created_by: str, expires_in: timedelta = timedelta(hours=12),
                 known: Mapping[tuple[str, str], str] | None = None) -> None:
        self.dsn = dsn
        self.secret_key = secret_key
        self.created_by = created_by
        self.expires_in = expires_in
        self._tokens: dict[tuple[str, str], str] = dict(known or {})
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._thread_lock = threading.Lock()

    async def token(self, actor: str, role: str) -> str:
        key = (actor, role)
        if key in self._tokens:
            return self._tokens[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._tokens:
                store = TokenStore(await self._pool_here(), self.secret_key)
                issued = await store.create(actor, role, created_by=self.created_by, expires_in=self.expires_in,
                                            note="minted for a development tool or a test")
                self._tokens[key] = issued.token
        return self._tokens[key]

    def token_sync(self, actor: str, role: str) -> str:
        """The same from synchronous code (a one-off connection in a thread of its own)."""
        key = (actor, role)
        with self._thread_lock:
            if key not in self._tokens:
                box: list[str] = []

                async def mint() -> None:
                    conn = await asyncpg.connect(self.dsn)
                    try:
                        await ensure_schema(conn)
                        issued = await TokenStore(_One(conn), self.secret_key).create(
                            actor, role, created_by=self.created_by, expires_in=self.expires_in)
                        box.append(issued.token)
                    finally:
                        await conn.close()

                t = threading.Thread(target=lambda: asyncio.run(mint()))
                t.start()
                t.join()
                if not box:
                    raise RuntimeError(f"could not mint a token for {actor} ({role})")
                self._tokens[key] = box[0]
        return self._tokens[key]

    async def _pool_here(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is not loop:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=2)
            self._loop = loop
            async with self._pool.acquire() as conn:
                await ensure_schema(conn)
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None and self._loop is asyncio.get_running_loop():
            await self._pool.close()
        self._pool = None


class _One:
    """A single connection where TokenStore expects a pool."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetchrow(self, *args: object) -> asyncpg.Record | None:
        return await self.conn.fetchrow(*args)


class ActorAuth(httpx.Auth):
    """Bearer token of the identity in X-Actor / X-Role (module doc). Without either header a request
    acts as `read_as` when it reads (GET, HEAD) and as `write_as` otherwise; X-Actor alone means a
    customer, X-Role alone the actor `anonymous`."""

    def __init__(self, tokens: ActorTokens, *, read_as: tuple[str, str] = ("auditor", "auditor"),
                 write_as: tuple[str, str] = ("anonymous", "customer")) -> None:
        self.tokens = tokens
        self.read_as = read_as
        self.write_as = write_as

    def identity(self, request: httpx.Request) -> tuple[str, str] | None:
        if "authorization" in request.headers:
            return None
        actor, role = request.headers.get("x-actor"), request.headers.get("x-role")
        if actor is None and role is None:
            return self.read_as if request.method in ("GET", "HEAD") else self.write_as
        return actor or "anonymous", role or "customer"

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        who = self.identity(request)
        if who is not None:
            request.headers["Authorization"] = f"Bearer {await self.tokens.token(*who)}"
        yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        who = self.identity(request)
        if who is not None:
            request.headers["Authorization"] = f"Bearer {self.tokens.token_sync(*who)}"
        yield request
