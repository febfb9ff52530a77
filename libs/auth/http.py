"""The access gate of every HTTP API: bearer token -> principal -> the route's rule.

`install_auth(app, table, container)` is the last line of each service's `create_app`. For every
request to a route that is not open, before the route's own validation runs:

1. `Authorization: Bearer <token>` is looked up (libs/auth/tokens.py; no cache, so a revocation
   counts from the next request). Missing, malformed, unknown, expired or revoked: 401 with
   `WWW-Authenticate: Bearer` and the reason.
2. `X-Actor` / `X-Role`, if a client still sends them, must agree with the token (a client using the
   wrong token is refused rather than recorded under someone else): 403 naming the header.
3. The token's role must be among the rule's roles: 403 naming `X-Role` and the roles allowed.
4. A customer or merchant must be the resource's party (policy.Own). Reading someone else's is a
   404 exactly like reading nothing (its existence is not revealed); a command on it is a 403
   naming `X-Actor`; a list not filtered to themselves is a 403 naming the filter.

Pages a browser reads (a rule with `browser=True`: the projector's console) also take the token
from the `closeloop_session` cookie, which the console's sign-in form sets (HttpOnly, SameSite=Strict,
reads only); a browser that sends neither is redirected to the sign-in form.

Then the principal (actor, role, token id) is what `libs.http.context.Ctx` records in every event's
metadata. The rules are also written into the OpenAPI (security scheme, roles of each operation).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.middleware import Middleware
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from libs.auth.policy import READ_METHODS, AccessTable, Entry, Open, Own, Parties, Rule, check_table
from libs.auth.roles import PARTIES
from libs.auth.tokens import Principal, TokenRefused, TokenStore, ensure_schema
from libs.http.errors import error_body
from libs.observability import log_refusal

log = logging.getLogger("closeloop.auth")
PRINCIPAL_KEY = "closeloop.principal"
CLAIMED_KEY = "closeloop.claimed"  # who the request's token names, even when it is then refused (for the log)
ALWAYS_OPEN: dict[str, Entry] = {
    "GET /healthz": Open("liveness: answers nothing but ok"),
    "GET /readyz": Open("readiness: progress counters only"),
    "GET /metrics": Open("Prometheus scraping"),
}
SCHEME = "bearerAuth"
SESSION_COOKIE = "closeloop_session"
LOGIN_PATH = "/console/login"


def principal_of(scope: Scope) -> Principal | None:
    """The principal the gate authenticated for this request (None on open routes)."""
    found: Principal | None = scope.get(PRINCIPAL_KEY)
    return found


@dataclass(frozen=True)
class _Route:
    key: str
    method: str
    path: str
    regex: re.Pattern[str]
    entry: Entry


def _fields(field: str, rule: str) -> list[dict[str, str]]:
    return [{"field": field, "rule": rule}]


def _unauthorized(exc: TokenRefused) -> JSONResponse:
    code = "unauthenticated" if exc.reason == "missing" else "invalid_token"
    challenge = 'Bearer realm="closeloop"'
    if exc.reason != "missing":
        text = exc.message.replace('"', "'").encode("ascii", "replace").decode()  # a header value is ASCII
        challenge += f', error="invalid_token", error_description="{text}"'
    return JSONResponse(error_body(code, exc.message, reason=exc.reason, token_id=exc.token_id,
                                   fields=_fields("Authorization", exc.message)),
                        status_code=401, headers={"WWW-Authenticate": challenge})


def _forbidden(field: str, rule: str, **details: Any) -> JSONResponse:
    return JSONResponse(error_body("forbidden", rule, fields=_fields(field, rule), **details), status_code=403)


def _not_found(thing: str, value: str, field: str) -> JSONResponse:
    # The same body as the service's own NotFound for a missing one (libs/http/errors.py names the parameter).
    message = f"{thing} {value} not found"
    return JSONResponse(error_body("not_found", message, id=value, fields=_fields(field, message)), status_code=404)


def session_token(headers: dict[str, str]) -> str | None:
    """The token in the console's session cookie, if the request carries one."""
    try:
        jar = SimpleCookie(headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def _unavailable(why: str) -> JSONResponse:
    return JSONResponse(error_body("service_unavailable", why), status_code=503, headers={"Retry-After": "2"})


def _to_login(scope: Scope, reason: str | None = None) -> RedirectResponse:
    """A browser without a (valid) session goes to the sign-in form, which brings it back here."""

    root = scope.get("root_path", "")
    path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    back = path + (f"?{query}" if query else "")
    url = f"{root}{LOGIN_PATH}?next={quote(back, safe='')}" + (f"&reason={reason}" if reason else "")
    return RedirectResponse(url, status_code=303)


class AccessGate:
    """Pure ASGI middleware (inside the metrics and correlation-id middleware, so refusals are
    measured, logged and carry X-Correlation-ID)."""

    def __init__(self, app: ASGIApp, routes: list[_Route], tokens: Callable[[], TokenStore | None]) -> None:
        self.app = app
        self.routes = routes
        self.tokens = tokens

    def _match(self, scope: Scope) -> tuple[_Route | None, dict[str, str]]:
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        for route in self.routes:
            m = route.regex.match(path)
            if m and route.method == method:
                return route, m.groupdict()
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, path_params = self._match(scope)
        if route is None or isinstance(route.entry, Open):  # unknown paths get the router's 404/405
            await self.app(scope, receive, send)
            return
        refused = await self._admit(scope, route, route.entry, path_params)
        if refused is not None:
            _log_refused(scope, route.key, refused)
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, route: _Route, rule: Rule,
                     path_params: dict[str, str]) -> JSONResponse | RedirectResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        tokens = self.tokens()
        if tokens is None:
            return _unavailable("access control is not configured in this process")
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.strip().partition(" ")
        token = credentials.strip() if authorization else None
        from_cookie = False
        if not authorization and rule.browser:
            token = session_token(headers)
            from_cookie = token is not None
            if token is None and "text/html" in headers.get("accept", ""):
                return _to_login(scope)
        try:
            if authorization and scheme.lower() != "bearer":
                raise TokenRefused("malformed", "the Authorization header must be 'Bearer <token>'")
            principal = await tokens.authenticate(token)
        except TokenRefused as exc:
            scope[CLAIMED_KEY] = (exc.actor, exc.role, exc.token_id)
            if from_cookie and "text/html" in headers.get("accept", ""):
                return _to_login(scope, exc.reason)  # an expired or revoked session: sign in again
            return _unauthorized(exc)
        except Exception as exc:  # the database is down or restarting: refuse, never let it through
            log.exception("token lookup failed")
            return _unavailable(f"the token store is unavailable: {type(exc).__name__}")
        scope[CLAIMED_KEY] = (principal.actor, principal.role, principal.token_id)
        for header, value in (("X-Actor", principal.actor), ("X-Role", principal.role)):
            claimed = headers.get(header.lower())
            if claimed is not None and claimed != value:
                return _forbidden(header, f"{header} {claimed!r} contradicts the bearer token, whose "
                                          f"{header[2:].lower()} is {value!r} (send the token of who acts)")
        if principal.role not in rule.roles:
            allowed = sorted(rule.roles)
            return _forbidden("X-Role", f"only the {', '.join(allowed)} role{'s' if len(allowed) > 1 else ''} may "
                                        f"{route.key}; the token's role is {principal.role!r}",
                              required_roles=allowed, role=principal.role)
        if rule.own is not None and principal.role in PARTIES:
            refused = await self._own(scope, route, rule.own, principal, path_params, tokens)
            if refused is not None:
                return refused
        scope[PRINCIPAL_KEY] = principal
        return None

    async def _own(self, scope: Scope, route: _Route, own: Own, principal: Principal, path_params: dict[str, str],
                   tokens: TokenStore) -> JSONResponse | None:
        reading = route.method in READ_METHODS
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        actor, role = principal.actor, principal.role
        if own.how == "query":
            [param] = own.params
            if query.get(param) != actor:
                return _forbidden(param, f"a {role} sees only their own {own.thing}s: set {param}={actor}")
            return None
        values = {**query, **path_params}
        name = next((p for p in own.params if values.get(p)), None)
        if name is None:
            return _forbidden("/".join(own.params), f"a {role} must name their own {own.thing} "
                                                    f"({' or '.join(own.params)})")
        value = values[name]
        if own.how == "path":
            mine = value == actor
        else:
            assert own.lookup is not None
            try:
                async with tokens.pool.acquire() as conn:
                    parties: Parties | None = await own.lookup(conn, name, value)
            except Exception as exc:
                log.exception("ownership lookup of %s %s failed", own.thing, value)
                return _unavailable(f"the database is unavailable: {type(exc).__name__}")
            mine = parties is not None and parties.include(role, actor)
        if mine:
            return None
        if reading:  # someone else's looks exactly like nothing at all
            return _not_found(own.thing, value, name)
        return _forbidden("X-Actor", f"only the {own.thing}'s own {role} may {route.key}; the token's actor "
                                     f"{actor!r} is not")


def _log_refused(scope: Scope, route: str, response: JSONResponse | RedirectResponse) -> None:
    """The gate's refusal as one structured log line: its status, code, rule and field from the body it sends
    (a browser sent to sign in: the reason its session was refused, if it had one)."""
    if response.status_code >= 500:
        return  # not a refusal: the service cannot decide (logged where it failed)
    if isinstance(response, RedirectResponse):
        actor, role, token_id = scope.get(CLAIMED_KEY) or (None, None, None)
        log_refusal(scope, status=response.status_code, code="sign_in", reason="no valid session: sent to sign in",
                    route=route, actor=actor, role=role, token_id=token_id, field="Cookie")
        return
    error = orjson.loads(bytes(response.body)).get("error", {})
    fields = error.get("details", {}).get("fields") or [{}]
    actor, role, token_id = scope.get(CLAIMED_KEY) or (None, None, None)
    log_refusal(scope, status=response.status_code, code=error.get("code", ""), reason=error.get("message", ""),
                route=route, actor=actor, role=role, token_id=token_id, field=fields[0].get("field"))


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    out = []
    for ctx in iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute) and ctx.path:
            out += [(method, ctx.path) for method in sorted(ctx.methods or ()) if method != "HEAD"]
    return out


def install_auth(app: FastAPI, table: AccessTable, container: Any | None) -> None:
    """Put every route of `app` behind the gate (module doc). Every route needs an entry in `table`
    (or is one of the always-open health and metrics routes); a route without one is refused here,
    when the app is built, so that a new endpoint cannot slip through unguarded. Entries for routes
    the app does not serve (e.g. test-only ones) are allowed. `container` (None: OpenAPI only) gives
    the pool (`container.store.pool`) and the secret (`container.settings.secret_key`); the access
    token migrations are applied at the app's start-up."""
    full: dict[str, Entry] = {**ALWAYS_OPEN, **table}
    check_table(full)
    served = _routes(app)
    missing = [f"{m} {p}" for m, p in served if f"{m} {p}" not in full]
    if missing:
        raise RuntimeError(f"{app.title}: no access rule for {', '.join(missing)}; add one to the service's "
                           "entrypoints/access.py (libs/auth/policy.py says how)")
    routes = [_Route(f"{m} {p}", m, p, compile_path(p)[0], full[f"{m} {p}"]) for m, p in served]
    store: list[TokenStore] = []

    def tokens() -> TokenStore | None:
        if container is None:
            return None
        if not store:
            store.append(TokenStore(container.store.pool, container.settings.secret_key))
        return store[0]

    if app.middleware_stack is not None:
        raise RuntimeError("install_auth must run before the app serves its first request")
    # Appended, not add_middleware(): the innermost user middleware, inside metrics and correlation ids.
    app.user_middleware.append(Middleware(AccessGate, routes=routes, tokens=tokens))
    app.state.access_table = full
    _document(app, full)
    if container is not None:
        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(a: Any) -> AsyncIterator[Any]:
            async with container.store.pool.acquire() as conn:
                await ensure_schema(conn)
            async with inner(a) as state:
                yield state

        app.router.lifespan_context = lifespan


def describe(entry: Entry) -> str:
    if isinstance(entry, Open):
        return f"No token: {entry.why}."
    text = "Roles: " + ", ".join(sorted(entry.roles)) + "."
    if entry.own is not None:
        how = {"path": f"`{entry.own.params[0]}` must be their own id",
               "query": f"they must filter on themselves (`{entry.own.params[0]}`)",
               "lookup": f"only their own {entry.own.thing} (someone else's reads as 404)"}[entry.own.how]
        text += f" A customer or merchant: {how}."
    return text


def _document(app: FastAPI, table: dict[str, Entry]) -> None:
    original = app.openapi
    done: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = original()  # FastAPI caches it (until routes change): document each new one once
        if done and done[0] is schema:
            return schema
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
            "type": "http", "scheme": "bearer",
            "description": "A closeloop token or API key (`closeloop tokens create --actor … --role …`). Its actor "
                           "and role are recorded in every event the request appends. X-Actor / X-Role, if sent, "
                           "must agree with the token (403 otherwise)."}
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                entry = table.get(f"{method.upper()} {path}")
                if entry is None or not isinstance(op, dict):
                    continue
                op["x-closeloop-access"] = describe(entry)
                op["description"] = (op.get("description", "") + "\n\n" + describe(entry)).strip()
                if isinstance(entry, Open):
                    op["security"] = []
                    continue
                op["security"] = [{SCHEME: []}]
                responses = op.setdefault("responses", {})
                responses.setdefault("401", {"description": "no valid bearer token (missing, malformed, unknown, "
                                                            "expired or revoked: `details.reason`)"})
                responses.setdefault("403", {"description": "the token's role may not do this, or it is not the "
                                                            "party's own (body names X-Role or X-Actor and the rule)"})
        done[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
