"""The access gate (libs/auth/http.py) on a small app, with tokens in the real PostgreSQL: why a token is
refused (401 with the reason and WWW-Authenticate), expiry and revocation counting from the next
request, the 403 bodies, X-Actor / X-Role that contradict the token, ownership (someone else's reads
exactly like nothing; a command on it is 403), and the command context carrying the token's identity."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from libs.auth import PARTIES, READERS, Own, Parties, Role, TokenStore, allow
from libs.auth.http import install_auth
from libs.eventstore import EventStore
from libs.http.context import Ctx
from libs.http.errors import install_error_handlers

pytestmark = pytest.mark.integration
SECRET = "gate-test-secret-" + uuid.uuid4().hex
OWNERS = {"t-1": Parties(customer_id="c-1", merchant_id="m-1")}


async def _thing(_conn: Any, _param: str, thing_id: str) -> Parties | None:
    return OWNERS.get(thing_id)


def build_app(store: EventStore) -> FastAPI:
    app = FastAPI(title="gate test")
    install_error_handlers(app)

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        if thing_id not in OWNERS:
            from libs.domain.errors import NotFound

            raise NotFound(f"thing {thing_id} not found", id=thing_id)
        return {"thing_id": thing_id}

    @app.get("/things")
    async def things(owner: str | None = None) -> dict[str, Any]:
        return {"owner": owner}

    @app.post("/things/{thing_id}/poke")
    async def poke(thing_id: str, ctx: Ctx) -> dict[str, str]:
        return {"actor": ctx.actor, "role": ctx.role}

    @app.get("/wallets/{customer_id}")
    async def wallet(customer_id: str) -> dict[str, str]:
        return {"customer_id": customer_id}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    container = SimpleNamespace(store=store, settings=SimpleNamespace(secret_key=SECRET))
    install_auth(app, {
        "GET /things/{thing_id}": allow(PARTIES, READERS, own=Own.lookup_by("thing", "thing_id", _thing)),
        "GET /things": allow(Role.customer, READERS, own=Own.query("owner", "thing")),
        "POST /things/{thing_id}/poke": allow(PARTIES, Role.service, own=Own.lookup_by("thing", "thing_id", _thing)),
        "GET /wallets/{customer_id}": allow(Role.customer, READERS, own=Own.path("customer_id", "wallet")),
    }, container)
    return app


@pytest.fixture(scope="module")
async def tokens(store: EventStore) -> TokenStore:
    t = TokenStore(store.pool, SECRET)
    await t.ensure_schema()
    return t


@pytest.fixture
async def http(store: EventStore, tokens: TokenStore) -> AsyncIterator[httpx.AsyncClient]:
    # `tokens` applied the migrations (a service does it at start-up; ASGITransport runs no lifespan).
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(store)), base_url="http://t") as c:
        yield c


async def token(tokens: TokenStore, actor: str, role: str, **kw: Any) -> dict[str, str]:
    issued = await tokens.create(actor, role, created_by="gate-test", **kw)
    return {"Authorization": f"Bearer {issued.token}"}


async def test_open_routes_need_no_token(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(("headers", "reason", "code"), [
    ({}, "missing", "unauthenticated"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed", "invalid_token"),
    ({"Authorization": "Bearer not-a-closeloop-token"}, "malformed", "invalid_token"),
    ({"Authorization": "Bearer clt_" + "x" * 43}, "unknown", "invalid_token"),
])
async def test_no_valid_token_is_401_naming_why(http: httpx.AsyncClient, headers: dict[str, str], reason: str,
                                                 code: str) -> None:
    r = await http.get("/things/t-1", headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="closeloop"')
    err = r.json()["error"]
    assert (err["code"], err["details"]["reason"]) == (code, reason)
    assert err["details"]["fields"][0]["field"] == "Authorization" and err["details"]["fields"][0]["rule"]
    if reason != "missing":
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


async def test_a_token_made_under_another_secret_is_unknown(http: httpx.AsyncClient, store: EventStore) -> None:
    other = TokenStore(store.pool, "another-secret-" + uuid.uuid4().hex)
    issued = await other.create("c-1", "customer", created_by="gate-test")
    r = await http.get("/things/t-1", headers={"Authorization": f"Bearer {issued.token}"})
    assert r.status_code == 401 and r.json()["error"]["details"]["reason"] == "unknown"


async def test_an_expired_token_is_refused_from_its_expiry_on(http: httpx.AsyncClient, tokens: TokenStore) -> None:
    headers = await token(tokens, "c-1", "customer", expires_in=timedelta(seconds=1))
    assert (await http.get("/things/t-1", headers=headers)).status_code == 200
    await asyncio.sleep(1.2)
    r = await http.get("/things/t-1", headers=headers)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["details"]["reason"] == "expired" and err["details"]["token_id"].startswith("tok_")
    assert "expired at" in err["message"] and "expired at" in r.headers["WWW-Authenticate"]


async def test_a_revoked_token_is_refused_by_the_very_next_request(http: httpx.AsyncClient,
                                                                   tokens: TokenStore) -> None:
    issued = await tokens.create("c-1", "customer", created_by="gate-test")
    headers = {"Authorization": f"Bearer {issued.token}"}
    assert (await http.get("/things/t-1", headers=headers)).status_code == 200
    record, changed = await tokens.revoke(issued.record.token_id, revoked_by="gate-test")
    assert changed and record.revoked_by == "gate-test"
    r = await http.get("/things/t-1", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["details"]["reason"] == "revoked"
    again, changed = await tokens.revoke(issued.record.token_id, revoked_by="someone else")
    assert not changed and again.revoked_by == "gate-test"  # the first revocation stands


async def test_a_wrong_role_is_403_naming_the_role_and_the_roles_allowed(http: httpx.AsyncClient,
                                                                         tokens: TokenStore) -> None:
    r = await http.post("/things/t-1/poke", headers=await token(tokens, "audrey", "auditor"))
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "forbidden" and err["details"]["fields"][0]["field"] == "X-Role"
    assert err["details"]["required_roles"] == ["customer", "merchant", "service"]
    assert "POST /things/{thing_id}/poke" in err["message"] and "'auditor'" in err["message"]


async def test_x_actor_or_x_role_contradicting_the_token_is_refused(http: httpx.AsyncClient,
                                                                    tokens: TokenStore) -> None:
    headers = await token(tokens, "c-1", "customer")
    assert (await http.get("/things/t-1", headers={**headers, "X-Actor": "c-1", "X-Role": "customer"})).status_code \
        == 200
    for claim, field in (({"X-Actor": "c-2"}, "X-Actor"), ({"X-Role": "service"}, "X-Role")):
        r = await http.get("/things/t-1", headers={**headers, **claim})
        assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == field
        assert "contradicts the bearer token" in r.json()["error"]["message"]


async def test_someone_elses_reads_like_nothing_and_a_command_on_it_is_403(http: httpx.AsyncClient,
                                                                          tokens: TokenStore) -> None:
    owner, other, merchant = (await token(tokens, "c-1", "customer"), await token(tokens, "c-2", "customer"),
                              await token(tokens, "m-1", "merchant"))
    assert (await http.get("/things/t-1", headers=owner)).status_code == 200
    assert (await http.get("/things/t-1", headers=merchant)).status_code == 200
    theirs, nothing = (await http.get("/things/t-1", headers=other), await http.get("/things/t-404", headers=other))
    assert theirs.status_code == nothing.status_code == 404
    assert theirs.json()["error"]["message"].replace("t-1", "?") == nothing.json()["error"]["message"].replace(
        "t-404", "?")
    assert theirs.json()["error"]["code"] == nothing.json()["error"]["code"] == "not_found"
    r = await http.post("/things/t-1/poke", headers=other)
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "X-Actor"
    assert "c-1" not in r.text  # the refusal does not name the owner
    staff = await token(tokens, "ops", "service")
    assert (await http.get("/things/t-404", headers=staff)).json()["error"]["message"] == "thing t-404 not found"


async def test_a_customer_lists_and_reads_only_under_their_own_id(http: httpx.AsyncClient,
                                                                 tokens: TokenStore) -> None:
    me = await token(tokens, "c-1", "customer")
    assert (await http.get("/things", params={"owner": "c-1"}, headers=me)).status_code == 200
    for params in ({}, {"owner": "c-2"}):
        r = await http.get("/things", params=params, headers=me)
        assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "owner"
        assert "owner=c-1" in r.json()["error"]["message"]
    assert (await http.get("/things", headers=await token(tokens, "a", "auditor"))).status_code == 200
    assert (await http.get("/wallets/c-1", headers=me)).status_code == 200
    assert (await http.get("/wallets/c-2", headers=me)).status_code == 404


async def test_a_command_acts_as_the_tokens_actor_and_role(http: httpx.AsyncClient, tokens: TokenStore) -> None:
    r = await http.post("/things/t-1/poke", headers=await token(tokens, "m-1", "merchant", kind="api_key"))
    assert r.status_code == 200 and r.json() == {"actor": "m-1", "role": "merchant"}
    r = await http.post("/things/t-1/poke", headers=await token(tokens, "svc-1", "service"))
    assert r.json() == {"actor": "svc-1", "role": "service"}


async def test_tokens_are_stored_as_keyed_hashes_only(store: EventStore, tokens: TokenStore) -> None:
    actor = f"c-{uuid.uuid4().hex[:8]}"
    issued = await tokens.create(actor, "customer", created_by="gate-test", note="hash check")
    row = await store.pool.fetchrow("SELECT * FROM access_tokens WHERE token_id = $1", issued.record.token_id)
    assert issued.token not in {str(v) for v in dict(row).values()}
    assert row["token_hash"] != issued.token and len(row["token_hash"]) == 64
    assert (row["created_by"], row["note"], row["kind"]) == ("gate-test", "hash check", "token")
    listed = await tokens.list(actor=actor)
    assert [t.token_id for t in listed] == [issued.record.token_id]
    with pytest.raises(ValueError, match="role"):
        await tokens.create(actor, "root", created_by="gate-test")
