"""HTTP API of card disputes: the list (by state, overdue), one dispute with its history and what it
did to the order's refunds, and the evidence packet as one downloadable JSON document."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from libs.http.errors import error_body
from services.payments.application.disputes import DisputesService
from services.payments.domain.dispute import DisputeState

router = APIRouter(prefix="/disputes", tags=["disputes"])
DisputeId = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$",
                                description="the provider's dispute id, e.g. dp_1Mt...")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such dispute", "content": {"application/json": {"example": error_body(
        "not_found", "dispute dp_x not found", dispute_id="dp_x")}}}}


def _service(request: Request) -> DisputesService:
    c = request.app.state.payments
    return DisputesService(c.store, c.service.policies, c.service.clock)


@router.get("")
async def list_disputes(
    request: Request,
    state: Annotated[DisputeState | None, Query(description="only disputes in this state")] = None,
    overdue: Annotated[bool | None, Query(description="true: open disputes still awaiting evidence past their "
                                                      "evidence deadline; false: all others")] = None,
    order_id: Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """Disputes, newest first, with their state, amount, reason, evidence deadline and outcome."""
    return await _service(request).search(state=state, overdue=overdue, order_id=order_id, limit=limit,
                                          cursor=cursor)


@router.get("/{dispute_id}", responses=NOT_FOUND)
async def dispute(dispute_id: DisputeId, request: Request) -> dict[str, Any]:
    """One dispute: state, deadline, outcome, its history (every event with actor and time) and the order's
    refunds (frozen, held, released, chargebacks)."""
    return await _service(request).detail(dispute_id)


@router.get("/{dispute_id}/evidence-packet", responses={
    200: {"description": "the evidence packet, as a JSON file download", "content": {"application/json": {}}},
    **NOT_FOUND})
async def evidence_packet(dispute_id: DisputeId, request: Request) -> Response:
    """The dispute's evidence packet as one JSON document: summary, dispute, order, bill, service
    documentation, customer communication, the refund policy in force at placement, the activity log,
    Stripe's evidence fields prefilled, and what is not available."""
    doc = await _service(request).evidence(dispute_id)
    return Response(orjson.dumps(doc, option=orjson.OPT_INDENT_2), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="dispute-{dispute_id}-evidence.json"'})
