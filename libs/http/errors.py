"""One place that maps domain and store errors to HTTP.

Every error body has the same shape:
    {"error": {"code": ..., "message": ..., "details": {...}}}
422 bodies list each bad field: details.fields = [{"field": "slot.start", "rule": "..."}].
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.domain.errors import Conflict, DomainError, InvalidTransition, NotFound, RuleViolation
from libs.domain.money import CurrencyMismatch
from libs.eventstore import DATABASE_UNAVAILABLE, DuplicateEventId, IdempotencyKeyReused, WrongExpectedVersion
from libs.observability import HANDLER_ERRORS, log_refusal

log = logging.getLogger("closeloop.http")


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


# The field a 4xx without a more precise one is about, by status: every client error names a field and a rule.
_STATUS_FIELD = {400: "body", 401: "Authorization", 403: "X-Role", 404: "path", 405: "method", 406: "Accept",
                 409: "state", 413: "body", 415: "Content-Type", 422: "body", 429: "request"}
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\-\[\]]*): (.+)$", re.S)


def fields_of(request: Request, status: int, message: str, details: dict[str, Any] | None = None,
              field: str | None = None) -> list[dict[str, str]]:
    """The `fields` of an error body that has none yet: `field` if given; else the parameter a message of the
    form "name: rule" names; else the path parameter whose value the message quotes (a 404's id); else the
    part of the request the status is about."""
    if details and details.get("fields"):
        return list(details["fields"])
    rule = message
    if field is None:
        m = _FIELD_PREFIX.match(message)
        params = {**request.path_params, **request.query_params}
        if m and (m.group(1) in params or m.group(1).split(".")[0] in ("body", *params)):
            field, rule = m.group(1), m.group(2)
    if field is None:
        for name, value in request.path_params.items():
            if str(value) and str(value) in message:
                field = name
                break
    if field is None and status == 404 and request.path_params:
        field = next(iter(request.path_params))
    return [{"field": field or _STATUS_FIELD.get(status, "request"), "rule": rule}]


def _with_fields(request: Request, status: int, code: str, message: str, details: dict[str, Any],
                 field: str | None = None) -> dict[str, Any]:
    return error_body(code, message, **{**details, "fields": fields_of(request, status, message, details, field)})


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or ".".join(str(p) for p in loc)


def install_error_handlers(app: FastAPI) -> None:
    from libs.http.guard import install_request_guard

    install_request_guard(app)  # body size, media type and JSON shape, before any route reads the body

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": _field_path(tuple(err.get("loc", ()))), "rule": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{f['field']}: {f['rule']}" for f in fields)
        return JSONResponse(
            error_body("validation_error", f"invalid request: {summary}", fields=fields), status_code=422
        )

    @app.exception_handler(InvalidTransition)
    async def _transition(request: Request, exc: InvalidTransition) -> JSONResponse:
        return JSONResponse(_with_fields(request, 409, exc.code, exc.message, exc.details, "state"), status_code=409)

    @app.exception_handler(RuleViolation)
    async def _rule(request: Request, exc: RuleViolation) -> JSONResponse:
        # A rule about who may act (code "forbidden", e.g. only an approver decides) is a 403.
        status = 403 if exc.code == "forbidden" else 422
        if status == 403:
            from libs.auth.http import principal_of  # libs.auth.http imports this module

            principal = principal_of(request.scope)
            route = request.scope.get("route")
            log_refusal(request.scope, status=403, code=exc.code, reason=exc.message, field=exc.field,
                        route=f"{request.method} {getattr(route, 'path', request.url.path)}",
                        actor=getattr(principal, "actor", None), role=getattr(principal, "role", None),
                        token_id=getattr(principal, "token_id", None))
        return JSONResponse(error_body(exc.code, exc.message, fields=[{"field": exc.field, "rule": exc.rule}]),
                            status_code=status)

    @app.exception_handler(CurrencyMismatch)
    async def _currency(_: Request, exc: CurrencyMismatch) -> JSONResponse:
        return JSONResponse(
            error_body("currency_mismatch", str(exc), fields=[{"field": "currency", "rule": str(exc)}]), status_code=422
        )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(_with_fields(request, 404, exc.code, exc.message, exc.details), status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        named = next((k for k in exc.details if k != "fields"), None)
        return JSONResponse(_with_fields(request, 409, exc.code, exc.message, exc.details, named or "state"),
                            status_code=409)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(_with_fields(request, 422, exc.code, exc.message, exc.details), status_code=422)

    @app.exception_handler(WrongExpectedVersion)
    async def _version(_: Request, exc: WrongExpectedVersion) -> JSONResponse:
        return JSONResponse(
            error_body(
                "version_conflict",
                str(exc),
                stream_id=exc.stream_id,
                expected_version=exc.expected,
                current_version=exc.actual,
                fields=[{"field": "If-Match", "rule": f"the current version is {exc.actual}, not {exc.expected}"}],
            ),
            status_code=409,
        )

    @app.exception_handler(IdempotencyKeyReused)
    async def _idem(_: Request, exc: IdempotencyKeyReused) -> JSONResponse:
        return JSONResponse(
            error_body(
                "idempotency_key_reused",
                str(exc),
                fields=[{"field": "Idempotency-Key", "rule": "reused with a different request"}],
            ),
            status_code=422,
        )

    @app.exception_handler(DuplicateEventId)
    async def _dup(_: Request, exc: DuplicateEventId) -> JSONResponse:
        return JSONResponse(error_body("duplicate_event", str(exc), fields=[{"field": "event_id", "rule": str(exc)}]),
                            status_code=409)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        extra = {"fields": fields_of(request, exc.status_code, detail)} if 400 <= exc.status_code < 500 else {}
        return JSONResponse(
            error_body(f"http_{exc.status_code}", detail, **extra),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _db_gone(_: Request, exc: Exception) -> JSONResponse:
        # Nothing can be assumed stored: the client retries (with the same Idempotency-Key, which makes a
        # command that did commit return its first answer and apply nothing twice).
        return JSONResponse(
            error_body("database_unavailable", "the database is unavailable; retry shortly with the same "
                       "Idempotency-Key", error=type(exc).__name__),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    for unavailable in DATABASE_UNAVAILABLE:
        if unavailable is not OSError:
            app.add_exception_handler(unavailable, _db_gone)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        HANDLER_ERRORS.labels("http", type(exc).__name__).inc()
        return JSONResponse(error_body("internal_error", "an unexpected error occurred; nothing was changed "
                                       "unless the response said so", correlation_id=getattr(
                                           request.state, "correlation_id", None)), status_code=500)

    @app.exception_handler(OSError)
    async def _os(_: Request, exc: OSError) -> JSONResponse:
        return JSONResponse(
            error_body("service_unavailable", f"a dependency is unavailable: {exc.strerror or exc}"),
            status_code=503,
            headers={"Retry-After": "2"},
        )
