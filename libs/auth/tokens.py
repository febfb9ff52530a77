"""Bearer tokens and API keys: issue, list, revoke, and authenticate a request's token.

A token is `clt_<43 url-safe characters>` (an API key `clk_…`: the same mechanism, for services
and integrations), 256 random bits. It names an actor (the customer id for a customer, the
merchant id for a merchant, a person or a system otherwise) and one role (libs/auth/roles.py).

Only a keyed hash of a token is stored (table `access_tokens`, migrations in ./migrations):
HMAC-SHA256 of the token under a pepper derived from the settings' secret key. The plain token is
returned once, by `create`. Changing the secret key therefore invalidates every token.

`authenticate` looks the token up on every call, with no cache: a token revoked or past its expiry
is refused by the very next request, in every process. The expiry is judged by the database clock,
so every service agrees on it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg

from libs.auth.roles import ALL_ROLES
from libs.eventstore.migrate import migrate

AUTH_MIGRATIONS = Path(__file__).parent / "migrations"
Kind = Literal["token", "api_key"]
KINDS: tuple[Kind, ...] = ("token", "api_key")
PREFIX: dict[str, str] = {"token": "clt_", "api_key": "clk_"}
ACTOR_PATTERN = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_TOKEN_SHAPE = re.compile(r"^cl[tk]_[A-Za-z0-9_-]{43}$")
_PEPPER_CONTEXT = b"closeloop access tokens v1"
RefusalReason = Literal["missing", "malformed", "unknown", "expired", "revoked"]


class TokenRefused(Exception):
    """The request's token does not authenticate anyone (HTTP 401); `reason` says why."""

    def __init__(self, reason: RefusalReason, message: str, token_id: str | None = None, *,
                 actor: str | None = None, role: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.token_id = token_id
        self.actor = actor  # whose token it was (revoked, expired), for the log of refusals; never in the body
        self.role = role


class UnknownToken(LookupError):
    """No token has this id (revoke)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the token's actor and role (recorded in every event it appends)."""

    actor: str
    role: str
    token_id: str
    kind: str


@dataclass(frozen=True)
class TokenRecord:
    """A stored token, without its secret."""

    token_id: str
    kind: str
    actor: str
    role: str
    note: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {"token_id": self.token_id, "kind": self.kind, "actor": self.actor, "role": self.role,
                "note": self.note, "status": self.status(now), "created_at": self.created_at.isoformat(),
                "created_by": self.created_by,
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "revoked_by": self.revoked_by}


@dataclass(frozen=True)
class IssuedToken:
    """A new token: `token` is the secret to hand over (shown once, never stored)."""

    token: str
    record: TokenRecord


def pepper(secret_key: str) -> bytes:
    """The key of the token hashes, derived from the settings' secret (never the secret itself)."""
    return hmac.new(secret_key.encode(), _PEPPER_CONTEXT, hashlib.sha256).digest()


def token_hash(key: bytes, token: str) -> str:
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def _record(row: asyncpg.Record) -> TokenRecord:
    return TokenRecord(**{k: row[k] for k in ("token_id", "kind", "actor", "role", "note", "created_at",
                                              "created_by", "expires_at", "revoked_at", "revoked_by")})


_COLUMNS = "token_id, kind, actor, role, note, created_at, created_by, expires_at, revoked_at, revoked_by"


async def ensure_schema(conn: asyncpg.Connection) -> list[str]:
    """Apply the access-token migrations (every service at start-up, the CLI before its work)."""
    return await migrate(conn, {"auth": AUTH_MIGRATIONS})


class TokenStore:
    """Tokens in PostgreSQL. `pool` is an asyncpg pool (or anything with acquire/fetchrow/fetch)."""

    def __init__(self, pool: Any, secret_key: str) -> None:
        self.pool = pool
        self._key = pepper(secret_key)

    async def ensure_schema(self) -> None:
        async with self.pool.acquire() as conn:
            await ensure_schema(conn)

    async def create(self, actor: str, role: str, *, created_by: str, kind: str = "token",
                     expires_in: timedelta | None = None, note: str = "") -> IssuedToken:
        """Issue a token for `actor` in `role`, valid for `expires_in` (None: until revoked)."""
        if not ACTOR_PATTERN.match(actor):
            raise ValueError(f"actor {actor!r}: 1-128 of A-Z a-z 0-9 _ . : @ -")
        if role not in ALL_ROLES:
            raise ValueError(f"role {role!r}: one of {', '.join(sorted(ALL_ROLES))}")
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: token or api_key")
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError("expires_in must be positive")
        token = PREFIX[kind] + secrets.token_urlsafe(32)
        token_id = ("tok_" if kind == "token" else "key_") + secrets.token_hex(8)
        row = await self.pool.fetchrow(
            f"""INSERT INTO access_tokens (token_id, token_hash, kind, actor, role, note, created_by, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp() + $8::interval)
                RETURNING {_COLUMNS}""",
            token_id, token_hash(self._key, token), kind, actor, role, note, created_by, expires_in)
        return IssuedToken(token, _record(row))

    async def list(self, *, actor: str | None = None, role: str | None = None,
                   active_only: bool = False) -> list[TokenRecord]:
        """Tokens, newest first (never their secrets)."""
        rows = await self.pool.fetch(
            f"""SELECT {_COLUMNS} FROM access_tokens
                 WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR role = $2)
                   AND (NOT $3 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > clock_timestamp())))
                 ORDER BY created_at DESC, token_id""", actor, role, active_only)
        return [_record(r) for r in rows]

    async def revoke(self, token_id: str, *, revoked_by: str) -> tuple[TokenRecord, bool]:
        """Revoke a token: refused from the next request on. Returns the record and whether this call
        revoked it (False: it was revoked before, and keeps its first revocation)."""
        row = await self.pool.fetchrow(
            f"""UPDATE access_tokens SET revoked_at = clock_timestamp(), revoked_by = $2
                 WHERE token_id = $1 AND revoked_at IS NULL RETURNING {_COLUMNS}""", token_id, revoked_by)
        if row is not None:
            return _record(row), True
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM access_tokens WHERE token_id = $1", token_id)
        if row is None:
            raise UnknownToken(token_id)
        return _record(row), False

    async def now(self) -> datetime:
        value: datetime = await self.pool.fetchval("SELECT clock_timestamp()")
        return value

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of a bearer token, or TokenRefused naming why not (missing, malformed,
        unknown, expired, revoked)."""
        if not token:
            raise TokenRefused("missing", "no bearer token: send Authorization: Bearer <token>")
        if not _TOKEN_SHAPE.match(token):
            raise TokenRefused("malformed", "the bearer token is not a closeloop token (clt_... or clk_...)")
        row = await self.pool.fetchrow(
            """SELECT token_id, kind, actor, role, expires_at, revoked_at,
                      expires_at IS NOT NULL AND expires_at <= clock_timestamp() AS expired
                 FROM access_tokens WHERE token_hash = $1""", token_hash(self._key, token))
        if row is None:
            raise TokenRefused("unknown", "unknown bearer token (never issued, or issued under another secret key)")
        if row["revoked_at"] is not None:
            raise TokenRefused("revoked", f"token {row['token_id']} was revoked at {row['revoked_at'].isoformat()}",
                               row["token_id"], actor=row["actor"], role=row["role"])
        if row["expired"]:
            raise TokenRefused("expired", f"token {row['token_id']} expired at {row['expires_at'].isoformat()}",
                               row["token_id"], actor=row["actor"], role=row["role"])
        return Principal(actor=row["actor"], role=row["role"], token_id=row["token_id"], kind=row["kind"])
