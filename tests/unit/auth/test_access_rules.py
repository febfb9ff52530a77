"""The access rules of every HTTP API, read from the apps themselves: every route has a rule (an app
with an unguarded route is refused when it is built), every rule refuses some role, the auditor reads
everything and runs nothing, and the OpenAPI shows the bearer scheme on every guarded operation."""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from libs.auth.http import ALWAYS_OPEN, install_auth
from libs.auth.policy import Open, Own, Rule, allow, check_table
from libs.auth.roles import ALL_ROLES, PARTIES, Role

SERVICES = ("orders", "projector", "payments", "rma", "shipping", "notifications")
# Guarded by their own signatures instead of a token (their tests: test_upstream_ingestion, test_shipping).
SIGNED = {("payments", "POST /webhooks/stripe"), ("shipping", "POST /carriers/{carrier}/events")}
# The console's sign-in: the form, and the check of the token it is given (test_console.py).
SIGN_IN = {("projector", "GET /console/login"), ("projector", "POST /console/login"),
           ("projector", "POST /console/logout")}
# Reference data every customer may read by id (not anyone's own).
REFERENCE = {("rma", "GET /catalogue/{sku}")}


@functools.cache
def app_of(service: str) -> FastAPI:
    app: FastAPI = importlib.import_module(f"services.{service}.entrypoints.http").create_app(None)
    return app


def routes(app: FastAPI) -> list[str]:
    return [f"{m} {ctx.path}" for ctx in iter_route_contexts(app.routes) if isinstance(ctx.original_route, APIRoute)
            for m in sorted(ctx.methods or ()) if m != "HEAD"]


CASES = [(s, key) for s in SERVICES for key in routes(app_of(s))]


@pytest.mark.parametrize(("service", "key"), CASES, ids=[f"{s}:{k}" for s, k in CASES])
def test_every_route_has_a_rule_that_refuses_someone_and_keeps_the_auditor_read_only(service: str, key: str) -> None:
    entry = app_of(service).state.access_table[key]
    if isinstance(entry, Open):
        assert key in ALWAYS_OPEN or (service, key) in SIGNED | SIGN_IN, f"{service} {key} is open: is that intended?"
        return
    method = key.split(" ", 1)[0]
    assert ALL_ROLES - entry.roles, f"{service} {key} refuses no role"
    if method == "GET":
        assert Role.auditor in entry.roles, f"the auditor may not read {service} {key}"
    else:
        assert Role.auditor not in entry.roles, f"the auditor may change something: {service} {key}"
    if entry.roles & PARTIES and method == "GET" and "{" in key and (service, key) not in REFERENCE:
        # A customer or merchant reading one resource by id: someone else's must not be readable.
        assert entry.own is not None, f"{service} {key}: customers or merchants read it with no ownership rule"


def test_an_app_with_a_route_and_no_rule_is_refused_when_built() -> None:
    app = FastAPI(title="t")

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    with pytest.raises(RuntimeError, match=re.escape("no access rule for GET /things/{thing_id}")):
        install_auth(app, {}, None)


@pytest.mark.parametrize(("table", "message"), [
    ({"POST /x": Rule(frozenset({"auditor", "service"}))}, "the auditor reads and never changes"),
    ({"GET /x": Rule(frozenset(ALL_ROLES))}, "refuses no role"),
    ({"get /x": allow(Role.service)}, "METHOD /path"),
])
def test_a_table_that_lets_the_auditor_write_or_refuses_nobody_is_refused(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_table(table)


def test_rules_name_known_roles_and_ownership_needs_a_party_role() -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        allow("superuser")
    with pytest.raises(ValueError, match="limits nobody"):
        allow(Role.service, own=Own.path("customer_id", "wallet"))


@pytest.mark.parametrize("service", SERVICES)
def test_the_openapi_shows_the_bearer_scheme_and_the_roles_of_every_guarded_operation(service: str) -> None:
    app = app_of(service)
    doc = app.openapi()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            entry = app.state.access_table[f"{method.upper()} {path}"]
            if isinstance(entry, Open):
                assert op["security"] == []
            else:
                assert op["security"] == [{"bearerAuth": []}], (method, path)
                assert {"401", "403"} <= set(op["responses"]), (method, path)
                assert "Roles: " in op["description"]
            # X-Actor / X-Role are no longer parameters: the token says who acts.
            assert not {p["name"] for p in op.get("parameters", [])} & {"x-actor", "x-role", "X-Actor", "X-Role"}
    assert app.openapi() is doc  # documented once, then cached


def test_a_session_cookie_rule_on_a_command_is_refused() -> None:
    """The console's cookie opens pages only: a cross-site form could post a command with it."""
    check_table({"GET /console": allow(Role.auditor, browser=True)})
    with pytest.raises(ValueError, match="reads only"):
        check_table({"POST /reconciliations": allow(Role.reconciler, browser=True)})
