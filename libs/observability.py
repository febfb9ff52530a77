"""Prometheus metrics and the correlation id carried by logs.

Every service mounts `/metrics` (Prometheus text format) with `install_metrics(app)`:
HTTP request latency by route and status, plus the platform counters below, which the
libraries update where the work happens.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

access_log = logging.getLogger("closeloop.access")
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

EVENTS_APPENDED = Counter("closeloop_events_appended_total", "Events appended to the event store", ["category"])
APPEND_CONFLICTS = Counter("closeloop_append_conflicts_total", "Appends refused for a wrong expected version")
RELAY_PUBLISHED = Counter("closeloop_relay_published_total", "Events published to Kafka by the relay", ["topic"])
RELAY_LAG = Gauge("closeloop_relay_lag_events", "Stored events not yet published (at the last scrape)")
CONSUMER_EVENTS = Counter("closeloop_consumer_events_total", "Events received by a consumer",
                          ["consumer", "outcome"])
CONSUMER_BATCH_SECONDS = Histogram("closeloop_consumer_batch_seconds", "Time to apply one consumer batch",
                                   ["consumer"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
CONSUMER_LAG = Gauge("closeloop_consumer_lag_messages", "Messages behind the partition end (at the last scrape), "
                     "per consumer group and partition this process owns", ["consumer", "group", "topic", "partition"])
CONSUMER_PARTITIONS = Gauge("closeloop_consumer_assigned_partitions",
                            "Partitions the consumer group assigned to this replica (at the last scrape)", ["consumer"])
HANDLER_ERRORS = Counter("closeloop_handler_errors_total", "Failures while handling a message or command",
                         ["component", "error"])
HTTP_SECONDS = Histogram("closeloop_http_request_seconds", "HTTP request latency", ["method", "route", "status"],
                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
DEAD_LETTERS = Counter("closeloop_dead_letters_total", "Messages a consumer set aside (dead-lettered)",
                       ["consumer", "reason"])
ACCESS_REFUSED = Counter("closeloop_access_refused_total", "Requests refused by access control",
                         ["status", "code"])
refusal_log = logging.getLogger("closeloop.access.refused")


def log_refusal(scope: MutableMapping[str, Any], *, status: int, code: str, reason: str, route: str,
                actor: str | None, role: str | None, token_id: str | None = None, field: str | None = None) -> None:
    """One structured JSON line per refused request (who, in which role, on which route, why), and a count."""
    ACCESS_REFUSED.labels(str(status), code).inc()
    refusal_log.warning("access refused: %s %s by %s (%s): %s", scope.get("method"), scope.get("path"),
                        actor or "anonymous", role or "-", reason, extra={"fields": {
                            "event": "access_refused", "status": status, "code": code, "actor": actor,
                            "role": role, "token_id": token_id, "method": scope.get("method"),
                            "path": scope.get("path"), "route": route, "field": field, "reason": reason}})


TIMERS_FIRED = Counter("closeloop_timers_fired_total", "Durable timers fired", ["kind"])


def _route_of(app: FastAPI, scope: MutableMapping[str, Any]) -> str:
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", "?")
    return "unmatched"


class _Measure:
    """Request latency by route and status, and the request's correlation id: the caller's
    X-Correlation-ID or a new one. Everything the request logs and every event it appends carries it;
    the response echoes it. Pure ASGI: Starlette's BaseHTTPMiddleware (`@app.middleware("http")`, used
    before) ran every request in a task group with memory streams, the largest framework cost per
    command in a py-spy profile of the orders service."""

    def __init__(self, app: Any, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        cid = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-correlation-id"), "") \
            or str(uuid.uuid4())
        token = correlation_id.set(cid)
        scope.setdefault("state", {})["correlation_id"] = cid
        status = 500

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            path = scope["path"]
            if path not in ("/metrics", "/healthz", "/readyz"):
                # The router records the route it matched in the scope (Starlette's Router: scope["route"]).
                matched = scope.get("route")
                route = getattr(matched, "path", None) or _route_of(self.fastapi_app, scope)
                HTTP_SECONDS.labels(scope["method"], route, str(status)).observe(elapsed)
                if access_log.isEnabledFor(logging.INFO):
                    access_log.info("%s %s %s %.1fms", scope["method"], path, status, elapsed * 1000)
            correlation_id.reset(token)


def install_metrics(app: FastAPI, on_scrape: Any = None) -> None:
    """Add /metrics and the HTTP latency middleware. `on_scrape` (async, optional) refreshes
    gauges that are costly to keep current (lags) just before they are read."""
    app.add_middleware(_Measure, fastapi_app=app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if on_scrape is not None:
            await on_scrape()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
