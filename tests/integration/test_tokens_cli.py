"""`closeloop tokens create|list|revoke` against the real database: the token is printed once and
authenticates, `list` never shows a secret, `revoke` makes it refused, and the CLI refuses the default
secret outside development like the services do."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from typer.testing import CliRunner

from libs.auth import TokenRefused, TokenStore
from libs.cli.main import app
from libs.eventstore import EventStore

pytestmark = pytest.mark.integration
SECRET = "cli-test-secret-" + uuid.uuid4().hex


def run(pg_dsn: str, *args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["tokens", *args], env={"DATABASE_URL": pg_dsn, "CLOSELOOP_SECRET_KEY": SECRET,
                                                             "CLOSELOOP_ENVIRONMENT": "test", **env})
    return result.exit_code, result.output


async def test_create_list_and_revoke_against_the_database(pg_dsn: str, store: EventStore) -> None:
    async def cli(*args: str) -> tuple[int, str]:  # the CLI runs its own event loop: not inside this one
        return await asyncio.to_thread(run, pg_dsn, *args)

    actor = f"cust-{uuid.uuid4().hex[:8]}"
    code, out = await cli("create", "--actor", actor, "--role", "customer", "--expires-in", "2h",
                    "--note", "cli test", "--created-by", "tester", "--json")
    assert code == 0, out
    created = json.loads(out)
    assert created["token"].startswith("clt_") and created["token_id"].startswith("tok_")
    assert (created["actor"], created["role"], created["kind"], created["status"], created["created_by"]) == (
        actor, "customer", "token", "active", "tester")
    tokens = TokenStore(store.pool, SECRET)
    principal = await tokens.authenticate(created["token"])
    assert (principal.actor, principal.role, principal.token_id) == (actor, "customer", created["token_id"])

    code, out = await cli("create", "--actor", f"{actor}-svc", "--role", "service", "--kind", "api_key")
    assert code == 0 and "Store it now" in out
    key = out.strip().splitlines()[-1]
    assert key.startswith("clk_") and (await tokens.authenticate(key)).role == "service"

    code, out = await cli("list", "--actor", actor, "--json")
    assert code == 0
    [listed] = json.loads(out)
    assert listed["token_id"] == created["token_id"] and "token" not in listed
    assert created["token"] not in out and listed["note"] == "cli test"
    code, table = await cli("list")
    assert code == 0 and created["token"] not in table and key not in table

    code, out = await cli("revoke", created["token_id"], "--by", "tester")
    assert code == 0 and f"revoked {created['token_id']}" in out
    with pytest.raises(TokenRefused) as refused:
        await tokens.authenticate(created["token"])
    assert refused.value.reason == "revoked"
    code, out = await cli("list", "--actor", actor, "--json")
    assert json.loads(out)[0]["status"] == "revoked" and json.loads(out)[0]["revoked_by"] == "tester"
    code, out = await cli("list", "--actor", actor, "--active", "--json")
    assert json.loads(out) == []
    code, out = await cli("revoke", created["token_id"])
    assert code == 0 and "already revoked" in out
    code, out = await cli("revoke", "tok_does_not_exist")
    assert code == 1 and "no token tok_does_not_exist" in out


def test_bad_input_and_the_default_secret_are_refused(pg_dsn: str) -> None:
    code, out = run(pg_dsn, "create", "--actor", "x", "--role", "superuser")
    assert code == 2 and "--role 'superuser'" in out
    code, out = run(pg_dsn, "create", "--actor", "has spaces", "--role", "customer")
    assert code == 2 and "actor 'has spaces'" in out
    code, out = run(pg_dsn, "create", "--actor", "x", "--role", "customer", "--expires-in", "forever")
    assert code == 2 and "--expires-in" in out
    for environment in ("test", "production"):
        result = CliRunner().invoke(app, ["tokens", "list"], env={
            "DATABASE_URL": pg_dsn, "CLOSELOOP_ENVIRONMENT": environment, "CLOSELOOP_SECRET_KEY": None})
        assert result.exit_code == 2 and "CLOSELOOP_SECRET_KEY must be set" in result.output
