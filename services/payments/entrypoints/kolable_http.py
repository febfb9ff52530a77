"""HTTP API of the Kolable refund/re-buy reconciliation (war-room seed 000): import, scorecard, decisions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from libs.http.context import Ctx
from libs.http.errors import error_body
from services.payments.application.kolable import KolableService
from services.payments.domain.kolable import DecisionKind

MAX_IMPORT_BYTES = 50_000_000

router = APIRouter(prefix="/kolable", tags=["kolable"])

IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The export file itself (see docs/kolable-import-format.md).",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}
IMPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "imported (or the same file imported before: its first result, nothing changed)"},
    403: {"description": "the actor's role is not importer; nothing stored"},
    413: {"description": "file too large"},
    422: {"description": "the file as a whole cannot be read (type, encoding, missing columns); nothing stored"},
}


class DecisionRequest(BaseModel):
    """The approver's decision on one order that needs one."""

    model_config = ConfigDict(extra="forbid")

    order_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    decision: DecisionKind
    reason: Annotated[str, Field(min_length=1, max_length=500)]


OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _service(request: Request) -> KolableService:
    return KolableService(request.app.state.payments.store)


@router.post("/orders/import", openapi_extra=IMPORT_BODY, responses=IMPORT_RESPONSES)
async def import_orders(request: Request, ctx: Ctx) -> JSONResponse:
    """Import an export of Kolable orders and payments (CSV or JSON); bad rows are reported by line."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        return JSONResponse(error_body("payload_too_large", f"body over {MAX_IMPORT_BYTES} bytes"), status_code=413)
    body = await request.body()
    if len(body) > MAX_IMPORT_BYTES:
        return JSONResponse(error_body("payload_too_large", f"body over {MAX_IMPORT_BYTES} bytes"), status_code=413)
    report = await _service(request).import_export(body, request.headers.get("content-type"), ctx)
    return JSONResponse(report)


@router.get("/reconciliation/scorecard")
async def reconciliation_scorecard(request: Request) -> dict[str, Any]:
    """Count and amount per status, cash gap, revenue recovered by re-buys, and the orders needing action."""
    return await _service(request).scorecard()


@router.get("/orders/{order_id}", responses={404: {"description": "no such Kolable order"}})
async def kolable_order(order_id: OrderId, request: Request) -> dict[str, Any]:
    """One order under reconciliation: its classification (status, reason, next step, money), its latest
    imported row, the payment provider's facts it was classified from, the marks and the decisions."""
    return await _service(request).order_view(order_id)


class MarkRequest(BaseModel):
    """The reconciler's note on an order, e.g. the refund reason (Huber 補原因)."""

    model_config = ConfigDict(extra="forbid")

    note: Annotated[str, Field(min_length=1, max_length=2000)]


@router.post("/orders/{order_id}/marks", responses={403: {"description": "the actor's role is not reconciler"},
                                                    404: {"description": "no such Kolable order"}})
async def mark_order(order_id: OrderId, body: MarkRequest, request: Request, ctx: Ctx) -> dict[str, Any]:
    """Mark a reconciliation result on an order (reconciler role only); every mark is an event."""
    return await _service(request).mark(order_id, body.note, ctx)


@router.post("/refund-decisions", responses={403: {"description": "the actor's role is not approver"}})
async def refund_decision(body: DecisionRequest, request: Request, ctx: Ctx) -> dict[str, Any]:
    """Record the approver's decision (pursue, close or escalate) on an order, with its reason."""
    return await _service(request).decide(body.order_id, body.decision.value, body.reason, ctx)
