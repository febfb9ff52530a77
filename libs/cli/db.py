"""The CLI's database connection and the small parsing helpers its commands share.

Where the database is: --database-url, else DATABASE_URL (or CLOSELOOP_DATABASE_URL), else the
`postgres_url` of a running `make run` stack (.closeloop/dev.json). The auditor's commands need
SELECT only (and `verify` the TEMPORARY privilege for its shadow tables; see libs/cli/readmodels.py).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import typer

from libs.eventstore.store import init_connection

DEV_JSON = Path(".closeloop") / "dev.json"

DatabaseUrl = typer.Option(None, "--database-url", metavar="URL",
                           help="PostgreSQL URL (default: $DATABASE_URL, else the running `make run` stack's)")


class CliError(Exception):
    """A problem the user can fix (bad argument, no database): printed without a traceback, exit 2."""


def resolve_dsn(option: str | None) -> str:
    if option:
        return option
    for name in ("DATABASE_URL", "CLOSELOOP_DATABASE_URL"):
        if os.environ.get(name):
            return os.environ[name]
    if DEV_JSON.exists():
        url = json.loads(DEV_JSON.read_text()).get("postgres_url")
        if url:
            return str(url)
    raise CliError("no database: pass --database-url or set DATABASE_URL (or start the stack with `make run`)")


def redact(dsn: str) -> str:
    """The URL without its password (for manifests and messages)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with jsonb decoded by orjson (like the services' pools)."""
    try:
        conn = await asyncpg.connect(dsn, server_settings={"application_name": "closeloop-cli"})
    except (OSError, asyncpg.PostgresError) as exc:
        raise CliError(f"cannot connect to {redact(dsn)}: {exc}") from exc
    await init_connection(conn)
    return conn


def parse_time(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time with its UTC offset (2025-03-10T09:00:00+08:00, ...Z), or "now".
    A time without an offset is refused: it would mean a different moment on every machine."""
    if text is None:
        return None
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"{option}: {text!r} is not an ISO 8601 time such as 2025-03-10T09:00:00+08:00") from None
    if value.tzinfo is None:
        raise CliError(f"{option}: {text!r} has no UTC offset; add one, e.g. {text}+08:00 or {text}Z")
    return value
