"""The orders service's command API. Routes only parse the request, build a command,
call the use case and shape the response; errors are mapped in libs.http.errors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request, Response
from pydantic import BaseModel, Field

from libs.application.unit_of_work import CommandResult
from libs.auth.http import install_auth
from libs.http.context import Ctx
from libs.http.errors import install_error_handlers
from libs.http.health import install_health
from libs.messaging.consumer import refresh_consumer_lag
from libs.observability import install_metrics
from services.orders.domain.commands import (
    AcceptOrder,
    AdjustBill,
    CancelOrder,
    ConfirmBill,
    PlaceOrder,
    PushBill,
    RecordCreditScore,
    SetPlatformConditions,
    StartService,
)
from services.orders.domain.order import Order
from services.orders.entrypoints.access import ACCESS

OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
CustomerId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Wait = Annotated[bool, Query(description="wait until the projector's read model shows this change "
                                         "(read-your-writes), up to the configured timeout")]

COMMAND_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such order"},
    409: {"description": "refused in the current state (body names the state and the allowed commands), "
                         "or If-Match version conflict"},
    422: {"description": "malformed input or a broken rule (body names the field and the rule)"},
}


class ReadModelWait(BaseModel):
    caught_up: bool
    waited_ms: float


class OrderCommandResponse(BaseModel):
    """The order after the command: its status, version and the commands it now allows."""

    order_id: str
    status: str
    status_label: str | None
    version: int
    allowed_commands: list[str]
    prepayment: dict[str, Any] | None = None
    payment_deadline: str | None = None
    estimated_total: dict[str, Any] | None = None
    prepayment_bill_id: str | None = None
    bill_id: str | None = None
    bill: dict[str, Any] | None = None
    read_model: ReadModelWait | None = Field(default=None, description="present when ?wait=true")


class CreditScoreBody(BaseModel):
    score: Annotated[int, Field(ge=0, le=1000)]
    source: Annotated[str, Field(min_length=1, max_length=64)]


def create_app(orders: Any | None) -> FastAPI:
    """The orders FastAPI app; `orders` (the running container) is None for OpenAPI only."""
    app = FastAPI(title="closeloop orders (commands)", version="1.0.0",
                  description="Place, pay, serve, bill and cancel O2O orders. Every command appends events to "
                              "the event store; the projector's query API shows the result.",
                  # No OpenTelemetry here: FastAPI's native telemetry otherwise asks the OTel providers
                  # whether they are configured on every request (3.6% of the orders samples in a profile).
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.orders = orders
    install_error_handlers(app)

    async def on_scrape() -> None:
        if orders is not None:
            await refresh_consumer_lag(orders.consumer.name, orders.broker)

    install_metrics(app, on_scrape)

    async def respond(request: Request, response: Response, result: CommandResult, wait: bool,
                      status: int = 200) -> dict[str, Any]:
        body = dict(result.response)
        response.status_code = status
        response.headers["ETag"] = f'"{body.get("version")}"'
        if result.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        if wait:
            c = request.app.state.orders
            caught, waited = await c.waiter.wait("orders", Order.stream_id_for(body["order_id"]), body["version"],
                                                 c.settings.read_your_writes_timeout_s)
            body["read_model"] = {"caught_up": caught, "waited_ms": round(waited * 1000, 1)}
        return body

    def svc(request: Request) -> Any:
        return request.app.state.orders.service

    async def ready_details() -> dict[str, Any]:
        c = app.state.orders
        return {"timers_fired": c.timers.fired, "payments_events_applied": c.consumer.stats.applied,
                "payments_events_refused": len(c.reactions.rejected)}

    install_health(app, lambda: app.state.orders.store.pool, ready_details,
                   readiness="the payments consumer's progress and the timers fired.")

    @app.post("/orders", status_code=201, response_model=OrderCommandResponse, tags=["orders"],
              responses=COMMAND_ERRORS)
    async def place_order(cmd: PlaceOrder, ctx: Ctx, request: Request, response: Response,
                          wait: Wait = False) -> dict[str, Any]:
        """Place an order. The prepayment policy decides whether it waits for prepayment (with a deadline
        while the staff member's slot is held) or goes straight to dispatch; the decision and its reasons
        are stored in the OrderPlaced event."""
        result = await svc(request).place_order(cmd, ctx)
        response.headers["Location"] = f"/orders/{result.response['order_id']}"
        return await respond(request, response, result, wait, status=201)

    @app.post("/orders/{order_id}/accept", response_model=OrderCommandResponse, tags=["merchant"],
              responses=COMMAND_ERRORS)
    async def accept(order_id: OrderId, cmd: AcceptOrder, ctx: Ctx, request: Request, response: Response,
                     wait: Wait = False) -> dict[str, Any]:
        """A merchant accepts the dispatched order (待確認 -> 已接單)."""
        return await respond(request, response, await svc(request).accept(order_id, cmd, ctx), wait)

    @app.post("/orders/{order_id}/start", response_model=OrderCommandResponse, tags=["merchant"],
              responses=COMMAND_ERRORS)
    async def start_service(order_id: OrderId, cmd: StartService, ctx: Ctx, request: Request, response: Response,
                            wait: Wait = False) -> dict[str, Any]:
        """The merchant starts the service on site; from now on neither side can cancel."""
        return await respond(request, response, await svc(request).start_service(order_id, cmd, ctx), wait)

    @app.post("/orders/{order_id}/bill", response_model=OrderCommandResponse, tags=["merchant"],
              responses=COMMAND_ERRORS)
    async def push_bill(order_id: OrderId, cmd: PushBill, ctx: Ctx, request: Request, response: Response,
                        wait: Wait = False) -> dict[str, Any]:
        """The merchant pushes the final bill: actual minutes and materials (revision 1)."""
        return await respond(request, response, await svc(request).push_bill(order_id, cmd, ctx), wait)

    @app.post("/orders/{order_id}/bill/adjust", response_model=OrderCommandResponse, tags=["merchant"],
              responses=COMMAND_ERRORS)
    async def adjust_bill(order_id: OrderId, cmd: AdjustBill, ctx: Ctx, request: Request, response: Response,
                          wait: Wait = False) -> dict[str, Any]:
        """The merchant adjusts the pushed bill (a new revision) until the customer confirms it."""
        return await respond(request, response, await svc(request).adjust_bill(order_id, cmd, ctx), wait)

    @app.post("/orders/{order_id}/bill/confirm", response_model=OrderCommandResponse, tags=["customer"],
              responses=COMMAND_ERRORS)
    async def confirm_bill(order_id: OrderId, cmd: ConfirmBill, ctx: Ctx, request: Request, response: Response,
                           wait: Wait = False) -> dict[str, Any]:
        """The customer confirms the bill revision they reviewed; settlement follows (待付款)."""
        return await respond(request, response, await svc(request).confirm_bill(order_id, cmd, ctx), wait)

    @app.post("/orders/{order_id}/cancel", response_model=OrderCommandResponse, tags=["orders"],
              responses=COMMAND_ERRORS)
    async def cancel(order_id: OrderId, cmd: CancelOrder, ctx: Ctx, request: Request, response: Response,
                     wait: Wait = False) -> dict[str, Any]:
        """Cancel before the service starts. Records who cancelled, the fault party and the time left before
        the service start; releases the slot and voids an unpaid prepayment bill."""
        return await respond(request, response, await svc(request).cancel(order_id, cmd, ctx), wait)

    @app.put("/customers/{customer_id}/credit-score", tags=["customers"], responses=COMMAND_ERRORS)
    async def record_credit_score(customer_id: CustomerId, body: CreditScoreBody, ctx: Ctx,
                                  request: Request) -> dict[str, Any]:
        """Record a customer's credit score from an external source (used by the prepayment policy)."""
        cmd = RecordCreditScore(customer_id=customer_id, score=body.score, source=body.source)
        return (await svc(request).record_credit_score(cmd, ctx)).response

    @app.get("/customers/{customer_id}/standing", tags=["customers"])
    async def customer_standing(customer_id: CustomerId, request: Request) -> dict[str, Any]:
        """What the prepayment policy knows about a customer now."""
        return await svc(request).customer_standing(customer_id)

    @app.put("/platform/conditions", tags=["platform"], responses=COMMAND_ERRORS)
    async def set_conditions(cmd: SetPlatformConditions, ctx: Ctx, request: Request) -> dict[str, Any]:
        """Set the severe-weather cities and the platform load the prepayment policy looks at."""
        return (await svc(request).set_platform_conditions(cmd, ctx)).response

    @app.get("/policy/prepayment", tags=["platform"])
    async def prepayment_policy(request: Request) -> dict[str, Any]:
        """The prepayment policy in force (version, rules, windows)."""
        return request.app.state.orders.service.policy.model_dump(mode="json")

    install_auth(app, ACCESS, orders)
    return app
