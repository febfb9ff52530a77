"""`closeloop tokens create|list|revoke`: the access tokens and API keys of the HTTP APIs (libs/auth).

The database is --database-url, else DATABASE_URL, else the running `make run` stack's
(.closeloop/dev.json). The secret key is CLOSELOOP_SECRET_KEY, which must be the services' own: a
token's stored hash is keyed by it (outside development the default secret is refused here as in
the services). A new token is printed once and never stored; `list` shows no secret.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from libs.auth.roles import ALL_ROLES
from libs.auth.tokens import KINDS, IssuedToken, TokenRecord, TokenStore, UnknownToken, ensure_schema
from libs.settings import ServiceSettings

T = TypeVar("T")
console = Console()
err = Console(stderr=True)
DEV_JSON = Path(".closeloop") / "dev.json"
DEFAULT_EXPIRY = {"token": "30d", "api_key": "never"}
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

tokens_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Access tokens and API keys: create (printed once), list (no secrets), revoke.")
DatabaseUrl = typer.Option(None, "--database-url", metavar="URL",
                           help="PostgreSQL URL (default: $DATABASE_URL, else the running `make run` stack's)")
JsonOut = typer.Option(False, "--json", help="machine-readable output")


class CliError(Exception):
    """A problem the user can fix: printed without a traceback, exit code 2."""


def parse_expiry(text: str) -> timedelta | None:
    """`90s`, `15m`, `12h`, `30d`, or `never` (None)."""
    if text.strip().lower() == "never":
        return None
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise CliError(f"--expires-in {text!r}: a positive duration such as 90s, 15m, 12h, 30d, or never")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _settings(database_url: str | None) -> ServiceSettings:
    dsn = database_url or os.environ.get("DATABASE_URL") or os.environ.get("CLOSELOOP_DATABASE_URL")
    if not dsn and DEV_JSON.exists():
        dsn = json.loads(DEV_JSON.read_text()).get("postgres_url")
    try:
        settings = ServiceSettings()
        return settings.model_copy(update={"database_url": dsn}) if dsn else settings
    except ValidationError as exc:
        raise CliError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None


def _run(database_url: str | None, work: Callable[[TokenStore], Awaitable[T]]) -> T:
    settings = _settings(database_url)

    async def main() -> T:
        try:
            pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        except (OSError, asyncpg.PostgresError) as exc:
            raise CliError(f"cannot connect to the database: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await ensure_schema(conn)
            return await work(TokenStore(pool, settings.secret_key))
        finally:
            await pool.close()

    return asyncio.run(main())


def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (CliError, ValueError) as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


@tokens_app.command("create")
@_guarded
def create(
    actor: str = typer.Option(..., "--actor", help="who the token speaks for: the customer id of a customer, the "
                                                 "merchant id of a merchant, a person or a system otherwise"),
    role: str = typer.Option(..., "--role", help="one of " + ", ".join(sorted(ALL_ROLES))),
    expires_in: str | None = typer.Option(None, "--expires-in", help="e.g. 90s, 15m, 12h, 30d, or never (default: "
                                                                    "30d for a token, never for an API key)"),
    kind: str = typer.Option("token", "--kind", help="token (people) or api_key (services, integrations)"),
    note: str = typer.Option("", "--note", help="what it is for"),
    created_by: str | None = typer.Option(None, "--created-by", help="who issues it (default: cli:$USER)"),
    as_json: bool = JsonOut,
    database_url: str | None = DatabaseUrl,
) -> None:
    """Issue a token (or API key) for an actor in one role. The token is printed once: it is not stored."""
    if kind not in KINDS:
        raise CliError(f"--kind {kind!r}: token or api_key")
    if role not in ALL_ROLES:
        raise CliError(f"--role {role!r}: one of {', '.join(sorted(ALL_ROLES))}")
    expiry = parse_expiry(expires_in or DEFAULT_EXPIRY[kind])
    issuer = created_by or f"cli:{getpass.getuser()}"

    async def work(store: TokenStore) -> tuple[IssuedToken, Any]:
        issued = await store.create(actor, role, kind=kind, expires_in=expiry, created_by=issuer, note=note)
        return issued, await store.now()

    issued, now = _run(database_url, work)
    if as_json:
        typer.echo(json.dumps({"token": issued.token, **issued.record.as_dict(now)}))
        return
    r = issued.record
    console.print(f"{r.kind} [bold]{r.token_id}[/] for [bold]{r.actor}[/] as [bold]{r.role}[/], expires "
                  f"{_when(r.expires_at) if r.expires_at else 'never'}")
    console.print("Store it now: it is shown once, and only its hash is kept.", style="yellow")
    typer.echo(issued.token)


@tokens_app.command("list")
@_guarded
def list_tokens(
    actor: str | None = typer.Option(None, "--actor", help="only this actor's"),
    role: str | None = typer.Option(None, "--role", help="only this role's"),
    active: bool = typer.Option(False, "--active", help="only tokens neither revoked nor expired"),
    as_json: bool = JsonOut,
    database_url: str | None = DatabaseUrl,
) -> None:
    """The tokens, newest first, with their status (active, expired, revoked); never their secrets."""

    async def work(store: TokenStore) -> tuple[list[TokenRecord], Any]:
        return await store.list(actor=actor, role=role, active_only=active), await store.now()

    records, now = _run(database_url, work)
    if as_json:
        typer.echo(json.dumps([r.as_dict(now) for r in records]))
        return
    table = Table(title=f"{len(records)} token{'s' if len(records) != 1 else ''}")
    for col in ("id", "kind", "actor", "role", "status", "created", "by", "expires", "revoked", "note"):
        table.add_column(col, overflow="fold")
    for r in records:
        status = r.status(now)
        table.add_row(r.token_id, r.kind, r.actor, r.role,
                      {"active": "[green]active[/]", "expired": "[yellow]expired[/]"}.get(status, "[red]revoked[/]"),
                      _when(r.created_at), r.created_by, _when(r.expires_at),
                      f"{_when(r.revoked_at)} by {r.revoked_by}" if r.revoked_at else "-", r.note)
    console.print(table)


@tokens_app.command("revoke")
@_guarded
def revoke(
    token_id: str = typer.Argument(..., help="the token's id (tok_… or key_…), as `list` shows it"),
    by: str | None = typer.Option(None, "--by", help="who revokes it (default: cli:$USER)"),
    as_json: bool = JsonOut,
    database_url: str | None = DatabaseUrl,
) -> None:
    """Revoke a token: every service refuses it from the next request on (401, reason revoked)."""
    revoker = by or f"cli:{getpass.getuser()}"

    async def work(store: TokenStore) -> tuple[TokenRecord, bool, Any] | None:
        try:
            record, changed = await store.revoke(token_id, revoked_by=revoker)
        except UnknownToken:
            return None
        return record, changed, await store.now()

    done = _run(database_url, work)
    if done is None:
        err.print(f"[red]no token {token_id}[/]")
        raise typer.Exit(1)
    record, changed, now = done
    if as_json:
        typer.echo(json.dumps({**record.as_dict(now), "revoked_now": changed}))
        return
    if changed:
        console.print(f"revoked {record.token_id} ({record.actor}, {record.role}) at {_when(record.revoked_at)}")
    else:
        console.print(f"{record.token_id} was already revoked at {_when(record.revoked_at)} by {record.revoked_by}")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
