"""The payments service's HTTP API: the Stripe webhook (more endpoints follow with issue 3)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from libs.auth.http import install_auth
from libs.http.errors import error_body, install_error_handlers
from libs.http.health import install_health
from libs.messaging.consumer import refresh_consumer_lag
from libs.observability import install_metrics
from services.payments.domain.signature import HEADER, SignatureError, verify
from services.payments.domain.upstream import MalformedEvent
from services.payments.domain.upstream_events import ReceivedVia
from services.payments.entrypoints.access import ACCESS
from services.payments.entrypoints.dispute_http import router as dispute_router
from services.payments.entrypoints.kolable_http import router as kolable_router
from services.payments.entrypoints.refund_http import router as refund_router
from services.payments.entrypoints.transaction_http import router as transaction_router
from services.payments.entrypoints.voucher_http import router as voucher_router
from services.payments.entrypoints.wallet_http import router as wallet_router

WEBHOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "stored (or recognised as a duplicate of an event already stored)"},
    400: {"description": "bad or stale signature, or a body that is not a Stripe event; nothing stored"},
    413: {"description": "body too large"},
}


def create_app(payments: Any | None) -> FastAPI:
    """The payments FastAPI app; `payments` (the running container) is None for OpenAPI only."""
    app = FastAPI(title="closeloop payments", version="1.0.0",
                  description="Payments and refunds: upstream payment events (Stripe format), transactions, "
                              "wallets, settlement, cancellation money, disputes, refund/re-buy reconciliation.")
    app.state.payments = payments
    install_error_handlers(app)

    async def on_scrape() -> None:
        if payments is not None:  # consumer lag and owned partitions, for autoscaling on lag
            await refresh_consumer_lag(payments.consumer.name, payments.broker)

    install_metrics(app, on_scrape)

    async def ready_details() -> dict[str, Any]:
        return {"upstream": app.state.payments.stats}

    install_health(app, lambda: app.state.payments.store.pool, ready_details,
                   readiness="upstream ingestion counters.")

    @app.post("/webhooks/stripe", tags=["upstream"], responses=WEBHOOK_RESPONSES)
    async def stripe_webhook(request: Request) -> JSONResponse:
        """Receive a Stripe event. The `Stripe-Signature` header must carry an HMAC-SHA256 (v1) of
        `"{t}.{raw body}"` made with one of the endpoint secrets, at most 5 minutes old. The raw event is
        stored as evidence with its normalised fact; a redelivered event id changes nothing."""
        c = request.app.state.payments
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > c.settings.webhook_max_body_bytes:  # refuse before reading it
            return JSONResponse(error_body("payload_too_large", f"body over {c.settings.webhook_max_body_bytes} bytes"),
                                status_code=413)
        body = await request.body()
        if len(body) > c.settings.webhook_max_body_bytes:
            return JSONResponse(error_body("payload_too_large", f"body over {c.settings.webhook_max_body_bytes} bytes"),
                                status_code=413)
        try:
            verify(body, request.headers.get(HEADER), c.settings.webhook_secrets, now=int(time.time()),
                   tolerance=c.settings.stripe_webhook_tolerance_s)
        except SignatureError as exc:
            return JSONResponse(error_body("invalid_signature", f"{HEADER}: {exc.reason}",
                                           fields=[{"field": HEADER, "rule": exc.reason}]), status_code=400)
        try:
            outcome = await c.ingestor.ingest(body, via=ReceivedVia.WEBHOOK, signature_verified=True)
        except MalformedEvent as exc:
            return JSONResponse(error_body("malformed_event", exc.message,
                                           fields=[{"field": exc.field, "rule": exc.rule}]), status_code=400)
        c.stats["duplicates" if outcome.duplicate else "stored"] += 1
        return JSONResponse(outcome.as_response())

    app.include_router(dispute_router)
    app.include_router(kolable_router)
    app.include_router(wallet_router)
    app.include_router(transaction_router)
    app.include_router(voucher_router)
    app.include_router(refund_router)
    install_auth(app, ACCESS, payments)
    return app
