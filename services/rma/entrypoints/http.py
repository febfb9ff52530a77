"""The RMA service's HTTP API: RMAs (open, review, cancel, start processing, substitution approval,
retry), stock transfers (accept, refuse), stock levels, warehouses, the catalogue, warranty proofs,
the fault dictionary and the quality queries. Routes only parse, build a command, call the use case
and shape the response; errors are mapped in libs.http.errors (422 naming the field and the rule,
409 naming the state and the allowed commands, 403, 404)."""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request, Response

from libs.application.unit_of_work import CommandResult
from libs.auth.http import install_auth
from libs.http.context import Ctx
from libs.http.errors import install_error_handlers
from libs.http.health import install_health
from libs.messaging.consumer import refresh_consumer_lag
from libs.observability import install_metrics
from services.rma.domain.catalogue import CatalogueItemSpec
from services.rma.domain.commands import (
    AnswerTransfer,
    ApproveSubstitution,
    CancelRma,
    DefineWarehouse,
    OpenRma,
    RecordSale,
    RefuseSubstitution,
    RefuseTransfer,
    RegisterProduct,
    ReviewWarranty,
    SetStockLevel,
    StartProcessing,
)
from services.rma.domain.events import RmaStatus
from services.rma.domain.warranty import local_date
from services.rma.entrypoints.access import ACCESS

_ID = r"^[A-Za-z0-9_.:-]+$"
RmaId = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID)]
TransferId = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID)]
WarehouseId = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID)]
SkuPath = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID)]
SerialPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]
SkuQuery = Annotated[str | None, Query(min_length=1, max_length=64, pattern=_ID)]

COMMAND_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "the token's role (X-Role) or actor (X-Actor) may not run this command"},
    404: {"description": "no such RMA / transfer"},
    409: {"description": "refused in the current state (body: current_state, stage, allowed_commands), an open RMA "
                         "for the serial already exists, no stock left, or an If-Match version conflict"},
    422: {"description": "malformed input or a broken rule (body names the field and the rule); nothing stored"},
}


def create_app(rma: Any | None) -> FastAPI:
    """The RMA FastAPI app; `rma` (the running container) is None for OpenAPI only."""
    app = FastAPI(title="closeloop rma", version="1.0.0",
                  description="Warranty returns (RMA): intake with the fault dictionary, warranty eligibility, the "
                              "RMA state machine, repeat-failure flags and fault counts, end-of-life substitution "
                              "with approval, stock and cross-department transfers, and the warranty-replacement "
                              "flow driven by shipping's events (docs/after-sales.md).")
    app.state.rma = rma
    install_error_handlers(app)

    async def on_scrape() -> None:
        if app.state.rma is not None:
            await refresh_consumer_lag(app.state.rma.consumer.name, app.state.rma.broker)

    install_metrics(app, on_scrape)

    async def ready_details() -> dict[str, Any]:
        c = app.state.rma
        return {"shipping_events_applied": c.consumer.stats.applied,
                "shipping_events_refused": len(c.reactions.rejected),
                "dead_lettered": c.reactions.dead_lettered, "timers_fired": c.timers.fired}

    install_health(app, lambda: app.state.rma.store.pool, ready_details,
                   readiness="the shipping.events consumer's progress and the transfer timers fired.")

    def svc(request: Request) -> Any:
        return request.app.state.rma.service

    def q(request: Request) -> Any:
        return request.app.state.rma.queries

    def respond(response: Response, result: CommandResult, status: int = 200) -> dict[str, Any]:
        response.status_code = status
        body = result.response
        version = body.get("version", (body.get("rma") or {}).get("version"))
        if version is not None:
            response.headers["ETag"] = f'"{version}"'
        if result.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return body

    # --- RMAs ----------------------------------------------------------------------------------------------
    @app.post("/rmas", status_code=201, tags=["rmas"], responses=COMMAND_ERRORS)
    async def open_rma(cmd: OpenRma, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
        """Open an RMA for a serial and SKU with a fault code of the dictionary (RECEIVED). The warranty is
        checked at once from the serial's registrations and sales records: ELIGIBLE (shipping issues the return
        label), REJECTED out of warranty, or waiting in RECEIVED for a reconciler (no proof of purchase). A unit
        that came back before is flagged as a repeat failure. Customers open their own RMAs (X-Actor =
        contact.customer_id); staff (service, platform) for anyone."""
        result = await svc(request).open_rma(cmd, ctx)
        response.headers["Location"] = f"/rmas/{result.response['rma_id']}"
        return respond(response, result, 201)

    @app.get("/rmas", tags=["rmas"])
    async def list_rmas(request: Request, status: Annotated[RmaStatus | None, Query()] = None,
                        customer: Annotated[str | None, Query(min_length=1, max_length=64, pattern=_ID)] = None,
                        serial: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
                        sku: SkuQuery = None, limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
        """RMAs, newest first, by state, customer, serial (also matches a replacement unit's serial) or SKU."""
        return await q(request).search(status=status.value if status else None, customer=customer, serial=serial,
                                       sku=sku, limit=limit, cursor=cursor)

    @app.get("/rmas/{rma_id}", tags=["rmas"], responses={404: {"description": "no such RMA"}})
    async def get_rma(rma_id: RmaId, request: Request) -> dict[str, Any]:
        """One RMA: state (and stage), label, allowed commands, warranty decision and basis, repeat-failure flag,
        replacement decision (candidates and scores), transfers, return label, shipment and tracking, and the
        history with who did what."""
        return await q(request).rma(rma_id)

    @app.post("/rmas/{rma_id}/review", tags=["rmas"], responses=COMMAND_ERRORS)
    async def review(rma_id: RmaId, cmd: ReviewWarranty, ctx: Ctx, request: Request,
                     response: Response) -> dict[str, Any]:
        """A reconciler's decision on an RMA without proof of purchase (reconciler role): eligible or rejected,
        with the note (and the purchase date on the customer's documents) as the basis."""
        return respond(response, await svc(request).review(rma_id, cmd, ctx))

    @app.post("/rmas/{rma_id}/cancel", tags=["rmas"], responses=COMMAND_ERRORS)
    async def cancel(rma_id: RmaId, cmd: CancelRma, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
        """Cancel before the parcel arrives (RECEIVED or ELIGIBLE): the customer or staff."""
        return respond(response, await svc(request).cancel(rma_id, cmd, ctx))

    @app.post("/rmas/{rma_id}/start-processing", tags=["rmas"], responses=COMMAND_ERRORS)
    async def start_processing(rma_id: RmaId, ctx: Ctx, request: Request, response: Response,
                               cmd: StartProcessing | None = None) -> dict[str, Any]:
        """A technician starts on the returned unit (PROCESSING; service or platform role) and the replacement
        is chosen: the same SKU when sold and in stock, else the best end-of-life substitute; over the approval
        threshold it waits for an approver; without stock at the RMA's warehouse a stock transfer is requested.
        Chosen, approved and in stock: RmaReplacementReady (shipping creates the shipment)."""
        return respond(response, await svc(request).start_processing(rma_id, cmd or StartProcessing(), ctx))

    @app.post("/rmas/{rma_id}/substitution/approve", tags=["rmas"], responses=COMMAND_ERRORS)
    async def approve(rma_id: RmaId, ctx: Ctx, request: Request, response: Response,
                      cmd: ApproveSubstitution | None = None) -> dict[str, Any]:
        """The approver approves the substitute over the cost threshold (approver role)."""
        return respond(response, await svc(request).approve_substitution(rma_id, cmd or ApproveSubstitution(), ctx))

    @app.post("/rmas/{rma_id}/substitution/refuse", tags=["rmas"], responses=COMMAND_ERRORS)
    async def refuse(rma_id: RmaId, cmd: RefuseSubstitution, ctx: Ctx, request: Request,
                     response: Response) -> dict[str, Any]:
        """The approver refuses the substitute (approver role); their alternative, if given, is tried first
        (approved by this decision), then the next candidates."""
        return respond(response, await svc(request).refuse_substitution(rma_id, cmd, ctx))

    @app.post("/rmas/{rma_id}/replacement/retry", tags=["rmas"], responses=COMMAND_ERRORS)
    async def retry(rma_id: RmaId, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
        """Choose the replacement again after no candidate had stock (e.g. once stock arrived)."""
        return respond(response, await svc(request).retry_replacement(rma_id, ctx))

    # --- transfers ----------------------------------------------------------------------------------------
    @app.get("/transfers", tags=["transfers"])
    async def list_transfers(request: Request,
                             status: Annotated[str | None, Query(pattern="^(REQUESTED|ESCALATED|ACCEPTED|REFUSED)$")]
                             = None,
                             warehouse: Annotated[str | None, Query(min_length=1, max_length=64, pattern=_ID,
                                                                    description="the source warehouse")] = None,
                             limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
        """Stock transfer requests, newest first (e.g. `?status=ESCALATED` for management)."""
        return await q(request).transfers(status=status, warehouse=warehouse, limit=limit, cursor=cursor)

    @app.get("/transfers/{transfer_id}", tags=["transfers"], responses={404: {"description": "no such transfer"}})
    async def get_transfer(transfer_id: TransferId, request: Request) -> dict[str, Any]:
        """One stock transfer: source, destination, time-to-live, status, escalation and answer."""
        return await q(request).transfer(transfer_id)

    @app.post("/transfers/{transfer_id}/accept", tags=["transfers"], responses=COMMAND_ERRORS)
    async def accept_transfer(transfer_id: TransferId, ctx: Ctx, request: Request, response: Response,
                              cmd: AnswerTransfer | None = None) -> dict[str, Any]:
        """The source warehouse or department sends the unit (staff): it is moved, reserved for the RMA, and
        the RMA's replacement is ready."""
        return respond(response, await svc(request).accept_transfer(transfer_id, cmd or AnswerTransfer(), ctx))

    @app.post("/transfers/{transfer_id}/refuse", tags=["transfers"], responses=COMMAND_ERRORS)
    async def refuse_transfer(transfer_id: TransferId, cmd: RefuseTransfer, ctx: Ctx, request: Request,
                              response: Response) -> dict[str, Any]:
        """The source cannot send it (staff): the RMA tries the next source, then the next candidate."""
        return respond(response, await svc(request).refuse_transfer(transfer_id, cmd, ctx))

    # --- stock and warehouses ---------------------------------------------------------------------------------
    @app.put("/stock/{warehouse_id}/{sku}", tags=["stock"], responses=COMMAND_ERRORS)
    async def set_stock(warehouse_id: WarehouseId, sku: SkuPath, cmd: SetStockLevel, ctx: Ctx, request: Request,
                        response: Response) -> dict[str, Any]:
        """Set the units available of a SKU at a warehouse or department (a stock take; staff)."""
        return respond(response, await svc(request).set_stock(warehouse_id, sku, cmd, ctx))

    @app.get("/stock", tags=["stock"])
    async def stock(request: Request,
                    warehouse: Annotated[str | None, Query(min_length=1, max_length=64, pattern=_ID)] = None,
                    sku: SkuQuery = None) -> dict[str, Any]:
        """Stock levels by warehouse and SKU."""
        return await q(request).stock(warehouse=warehouse, sku=sku)

    @app.put("/warehouses/{warehouse_id}", tags=["stock"], responses=COMMAND_ERRORS)
    async def define_warehouse(warehouse_id: WarehouseId, cmd: DefineWarehouse, ctx: Ctx, request: Request,
                               response: Response) -> dict[str, Any]:
        """Define a warehouse or department, with how long it has to answer transfer requests (staff)."""
        return respond(response, await svc(request).define_warehouse(warehouse_id, cmd, ctx))

    @app.get("/warehouses", tags=["stock"])
    async def warehouses(request: Request) -> dict[str, Any]:
        """The warehouses and departments."""
        return await q(request).warehouses()

    # --- catalogue ------------------------------------------------------------------------------------------
    @app.put("/catalogue/{sku}", tags=["catalogue"], responses=COMMAND_ERRORS)
    async def define_item(sku: SkuPath, spec: CatalogueItemSpec, ctx: Ctx, request: Request,
                          response: Response) -> dict[str, Any]:
        """Define a SKU (staff): warranty window, end of life, price, substitution rules (alternative SKU,
        feature score, price delta, active) and optionally its own price ceiling and approval threshold."""
        return respond(response, await svc(request).define_item(sku, spec, ctx))

    @app.get("/catalogue", tags=["catalogue"])
    async def catalogue(request: Request, eol: Annotated[bool | None, Query()] = None) -> dict[str, Any]:
        """The catalogue (`?eol=true`: the end-of-life SKUs)."""
        return await q(request).catalogue(eol=eol)

    @app.get("/catalogue/{sku}", tags=["catalogue"], responses={404: {"description": "not in the catalogue"}})
    async def item(sku: SkuPath, request: Request) -> dict[str, Any]:
        """One catalogue item with its substitution rules."""
        return await q(request).item(sku)

    @app.get("/substitution-policy", tags=["catalogue"])
    async def substitution_policy(request: Request) -> dict[str, Any]:
        """The default price ceiling and approval threshold of substitutions."""
        return svc(request).policy.model_dump(mode="json")  # type: ignore[no-any-return]

    # --- warranty proofs ------------------------------------------------------------------------------------
    @app.post("/warranty/registrations", tags=["warranty"], responses=COMMAND_ERRORS)
    async def register(cmd: RegisterProduct, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
        """A product registration (serial, SKU, purchase date): by the customer (X-Actor = customer_id) or staff.
        The same registration again changes nothing."""
        return respond(response, await svc(request).register_product(cmd, ctx))

    @app.post("/sales-records", tags=["warranty"], responses=COMMAND_ERRORS)
    async def record_sale(cmd: RecordSale, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
        """A sales record (serial, SKU, invoice number, sale date): importer or staff. The same invoice again
        changes nothing."""
        return respond(response, await svc(request).record_sale(cmd, ctx))

    @app.get("/warranty/{serial}", tags=["warranty"], responses={404: {"description": "nothing known"}})
    async def warranty(serial: SerialPath, request: Request) -> dict[str, Any]:
        """What is known about a serial's purchase: registrations, sales records, replacement units."""
        return await svc(request).warranty(serial)  # type: ignore[no-any-return]

    # --- quality -------------------------------------------------------------------------------------------
    @app.get("/faults", tags=["quality"])
    async def faults(request: Request) -> dict[str, Any]:
        """The fault dictionary: the codes an RMA may name."""
        return request.app.state.rma.service.faults.model_dump()  # type: ignore[no-any-return]

    @app.get("/quality/fault-counts", tags=["quality"])
    async def fault_counts(request: Request, sku: SkuQuery = None) -> dict[str, Any]:
        """RMAs counted by SKU and fault code, with the repeat failures among them (cases 2 and 10)."""
        return await q(request).fault_counts(sku)

    @app.get("/quality/repeat-failures", tags=["quality"])
    async def repeat_failures(request: Request, sku: SkuQuery = None, limit: Limit = 50,
                              cursor: Cursor = None) -> dict[str, Any]:
        """RMAs flagged as repeat failures (same serial, or an earlier RMA's replacement unit), newest first."""
        return await q(request).repeat_failures(sku=sku, limit=limit, cursor=cursor)

    @app.get("/quality/replacement-demand", tags=["quality"],
             responses={404: {"description": "not in the catalogue"}})
    async def replacement_demand(
            request: Request, sku: Annotated[str, Query(min_length=1, max_length=64, pattern=_ID)],
            failure_rate: Annotated[float | None, Query(ge=0, le=1, description="a failure rate over the warranty "
                                                                               "window (default: the observed one)")]
            = None) -> dict[str, Any]:
        """Warranty replacement demand of a SKU (case 13): units still under warranty x failure rate = the RMAs
        still to come, against the stock that can replace them (its own while sold, its active substitutes')."""
        service = svc(request)
        today = local_date(service.clock(), service.tz)
        rate = Fraction(str(failure_rate)) if failure_rate is not None else None
        return await q(request).replacement_demand(sku, today=today, failure_rate=rate)  # type: ignore[no-any-return]

    install_auth(app, ACCESS, rma)
    return app
