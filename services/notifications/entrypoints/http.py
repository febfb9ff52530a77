"""The notifications service's HTTP API: messages and SLA clocks (queries), health and metrics, and in
the test environment only the sender's fault injection. Errors as every service (libs/http/errors.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from libs.auth.http import install_auth
from libs.http.errors import error_body, install_error_handlers
from libs.http.health import install_health
from libs.messaging.consumer import refresh_consumer_lag
from libs.observability import install_metrics
from services.notifications.domain.notification import NotificationStatus
from services.notifications.domain.sla import STAGES
from services.notifications.entrypoints.access import ACCESS

ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
IdQuery = Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]
StageCode = Literal["received", "eligible", "shipped_in", "processing", "shipped_out"]
assert set(StageCode.__args__) == set(STAGES)  # type: ignore[attr-defined]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "not found", "content": {"application/json": {"example": error_body(
        "not_found", "notification x not found", notification_id="x")}}},
    422: {"description": "bad input (body names the field and the rule)"}}
BAD_QUERY: dict[int | str, dict[str, Any]] = {422: {"description": "bad query input (body names the field)"}}


class FailNextBody(BaseModel):
    """Fail the next `count` sends that match (test environment only)."""

    model_config = ConfigDict(extra="forbid")

    count: Annotated[int, Field(ge=1, le=1000)] = 1
    recipient: Annotated[str | None, Field(min_length=1, max_length=64, pattern=ID_PATTERN)] = None
    channel: Literal["email", "sms", "in_app"] | None = None
    permanent: bool = False
    error: Annotated[str, Field(min_length=1, max_length=200)] = "injected sender failure"


def create_app(notifications: Any | None) -> FastAPI:
    """The notifications FastAPI app; `notifications` (the running container) is None for OpenAPI only."""
    app = FastAPI(title="closeloop notifications", version="1.0.0",
                  description="Templated customer and operations messages for the after-sales flow (e-mail, SMS, "
                              "in-app; zh-TW and en), one per stage, from an outbox with retries; SLA clocks per "
                              "RMA stage with breach warnings and the RMA's ETA.")
    app.state.notifications = notifications
    install_error_handlers(app)

    async def on_scrape() -> None:
        if notifications is not None:
            await refresh_consumer_lag(notifications.consumer.name, notifications.broker)

    install_metrics(app, on_scrape)

    def services(request: Request) -> Any:
        return request.app.state.notifications.services

    async def ready_details() -> dict[str, Any]:
        c = app.state.notifications
        d = c.services.dispatcher.stats
        return {"events_applied": c.consumer.stats.applied, "events_refused": len(c.services.reactions.rejected),
                "dead_lettered": c.services.reactions.dead_lettered, "timers_fired": c.services.timers.fired,
                "notifications": {**c.services.notifier.stats, "sent": d.sent, "failed": d.failed,
                                  "retried": d.retried, "gave_up": d.gave_up}}

    install_health(app, lambda: app.state.notifications.store.pool, ready_details,
                   readiness="the consumer's progress, timers fired and the outbox counters.")

    @app.get("/notifications", tags=["notifications"], responses=BAD_QUERY)
    async def list_notifications(
        request: Request,
        recipient: Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN,
                                               description="the customer id, or `operations`")] = None,
        subject_id: Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN,
                                                description="the RMA id")] = None,
        status: Annotated[NotificationStatus | None, Query(description="pending, retrying, sent or gave_up")] = None,
        channel: Annotated[Literal["email", "sms", "in_app"] | None, Query()] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dict[str, Any]:
        """Messages, newest first: recipient, channel, locale, template, stage, rendered title and body, status
        and attempts."""
        return await services(request).queries.notifications(
            recipient=recipient, subject_id=subject_id, status=status.value if status else None, channel=channel,
            limit=limit, cursor=cursor)

    @app.get("/notifications/{notification_id}", tags=["notifications"], responses=NOT_FOUND)
    async def notification(
        request: Request,
        notification_id: Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)],
    ) -> dict[str, Any]:
        """One message: rendered title and body, channel, locale, attempts, status, and its history (queued,
        each failed attempt with the next attempt's time, sent or given up)."""
        return await services(request).queries.notification(notification_id)

    @app.get("/slas", tags=["sla"], responses=BAD_QUERY)
    async def list_slas(
        request: Request,
        breached: Annotated[bool | None, Query(description="true: stages that ran late (warned, stopped late or "
                                                           "running past due); false: the others")] = None,
        subject_id: IdQuery = None,
        stage: Annotated[StageCode | None, Query()] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dict[str, Any]:
        """Stage clocks (one per RMA and stage), newest first, with their SLA, due time and whether they ran
        late."""
        return await services(request).queries.slas(breached=breached, subject_id=subject_id, stage=stage,
                                                     limit=limit, cursor=cursor)

    @app.get("/slas/{subject_id}", tags=["sla"], responses=NOT_FOUND)
    async def subject_sla(
        request: Request,
        subject_id: Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)],
    ) -> dict[str, Any]:
        """The RMA's SLA: every stage's clock, the current stage, whether any ran late, and the ETA (the
        carrier's once shipped, else the current stage's due time plus the later stages' SLAs)."""
        return await services(request).queries.subject_sla(subject_id)

    if notifications is not None and notifications.settings.environment == "test":
        @app.post("/senders/fail-next", tags=["test"], include_in_schema=False)
        async def fail_next(body: FailNextBody, request: Request) -> dict[str, Any]:
            """Test environment only: the next `count` sends that match fail (transient unless `permanent`)."""
            rule = services(request).sender.fail_next(body.count, recipient=body.recipient, channel=body.channel,
                                                      permanent=body.permanent, error=body.error)
            return {"remaining": rule.remaining, "recipient": rule.recipient, "channel": rule.channel,
                    "permanent": rule.permanent}

    install_auth(app, ACCESS, notifications)
    return app
