"""Issue 7, item 7: every refused attempt is logged, as one JSON line naming the actor, the role, the route
and the reason, by the access gate (401, 403, someone else's read as 404) and by a service's own rule about
who may act (a 403 from the handler). The refusals themselves (a customer never reads or changes another's
order, RMA or wallet; a revoked token refused at once; the auditor changes nothing) are proved across the
running services by tests/e2e/test_access.py; here, on a small app with real tokens in the real PostgreSQL,
the log of them."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from libs.auth import PARTIES, Own, Role, TokenStore, allow
from libs.auth.http import install_auth
from libs.domain.errors import RuleViolation
from libs.eventstore import EventStore
from libs.http.context import Ctx
from libs.http.errors import install_error_handlers
from libs.runtime import JsonFormatter
from tests.integration.test_access_gate import OWNERS, SECRET, _thing, build_app, token, tokens

pytestmark = pytest.mark.integration
_ = tokens  # the fixture: the gate test's token store


class OnlyApprovers(RuleViolation):
    code = "forbidden"


def approvals_app(store: EventStore) -> FastAPI:
    """A command whose handler decides who may act (as rma's and payments' approvals do)."""
    app = FastAPI(title="approvals")
    install_error_handlers(app)

    @app.post("/things/{thing_id}/approve")
    async def approve(thing_id: str, ctx: Ctx) -> dict[str, str]:
        if ctx.role != "approver":
            raise OnlyApprovers("X-Role", "only an approver decides a substitution over the threshold")
        return {"approved": thing_id}

    install_auth(app, {"POST /things/{thing_id}/approve": allow(PARTIES, Role.service,
                                                                own=Own.lookup_by("thing", "thing_id", _thing))},
                 SimpleNamespace(store=store, settings=SimpleNamespace(secret_key=SECRET)))
    return app


class Lines:
    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(JsonFormatter())

    def __call__(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.buffer.getvalue().splitlines() if line.strip()]


@pytest.fixture
def log_lines() -> Iterator[Lines]:
    lines = Lines()
    logger = logging.getLogger("closeloop.access.refused")
    logger.addHandler(lines.handler)
    try:
        yield lines
    finally:
        logger.removeHandler(lines.handler)


@pytest.fixture
async def http(store: EventStore, tokens: TokenStore) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(store)), base_url="http://t") as c:
        yield c


async def test_every_refusal_by_the_gate_is_one_json_line_with_actor_role_route_and_reason(
        http: httpx.AsyncClient, tokens: TokenStore, log_lines: Lines) -> None:
    owner = OWNERS["t-1"].customer_id
    assert owner is not None
    mine = await token(tokens, owner, "customer")
    other = f"cust-{uuid.uuid4().hex[:8]}"
    theirs = await token(tokens, other, "customer")
    auditor = await token(tokens, f"aud-{uuid.uuid4().hex[:8]}", "auditor")
    revoked_actor = f"cust-{uuid.uuid4().hex[:8]}"
    issued = await tokens.create(revoked_actor, "customer", created_by="refusal-test")
    await tokens.revoke(issued.record.token_id, revoked_by="refusal-test")

    assert (await http.get("/things/t-1", headers=mine)).status_code == 200  # admitted: no line
    cases = [
        (lambda: http.get("/things/t-1"), 401, None, None, "GET /things/{thing_id}", "Authorization"),
        (lambda: http.get("/things/t-1", headers={"Authorization": f"Bearer {issued.token}"}), 401, revoked_actor,
         "customer", "GET /things/{thing_id}", "Authorization"),
        (lambda: http.get("/things/t-1", headers=theirs), 404, other, "customer", "GET /things/{thing_id}", "thing_id"),
        (lambda: http.post("/things/t-1/poke", headers=theirs), 403, other, "customer", "POST /things/{thing_id}/poke",
         "X-Actor"),
        (lambda: http.post("/things/t-1/poke", headers=auditor), 403, None, "auditor", "POST /things/{thing_id}/poke",
         "X-Role"),
        (lambda: http.get(f"/wallets/{owner}", headers=theirs), 404, other, "customer", "GET /wallets/{customer_id}",
         "customer_id"),
        (lambda: http.get("/things/t-1", headers={**mine, "X-Actor": other}), 403, owner, "customer",
         "GET /things/{thing_id}", "X-Actor"),
    ]
    for request, status, actor, role, route, field in cases:
        before = len(log_lines())
        r = await request()
        assert r.status_code == status, r.text
        new = log_lines()[before:]
        assert len(new) == 1, (route, status, new)
        [line] = new
        assert line["event"] == "access_refused" and line["level"] == "WARNING"
        assert (line["status"], line["route"], line["field"]) == (status, route, field)
        if actor is not None:
            assert line["actor"] == actor
        assert line["role"] == role
        assert line["reason"] == r.json()["error"]["message"] and line["reason"]
        assert line["code"] == r.json()["error"]["code"]
    revoked = [ln for ln in log_lines() if ln["actor"] == revoked_actor]
    assert revoked[0]["token_id"] == issued.record.token_id and "revoked" in revoked[0]["reason"]
    assert log_lines()[0]["actor"] is None  # no token: nobody to name, still logged


async def test_a_refusal_by_the_services_own_rule_is_logged_with_the_actor(store: EventStore, tokens: TokenStore,
                                                                           log_lines: Lines) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    headers = await token(tokens, service, "service")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=approvals_app(store)), base_url="http://t") as c:
        r = await c.post("/things/t-1/approve", headers=headers)
    assert r.status_code == 403
    [line] = log_lines()
    assert (line["actor"], line["role"], line["route"], line["field"], line["status"]) == (
        service, "service", "POST /things/{thing_id}/approve", "X-Role", 403)
    assert "only an approver" in line["reason"]
