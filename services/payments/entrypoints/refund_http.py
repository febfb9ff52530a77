"""HTTP API of refunds: customer service issues a refund of what an order paid, the refunds of an
order and the provider connector's queue, and an operator's retry of a failed refund. Routes
validate and dispatch to application/refunds.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from libs.domain.errors import RuleViolation
from libs.domain.money import Money
from libs.http.context import Ctx
from services.payments.application.refunds import RefundsService
from services.payments.domain.refund import RefundStatus
from services.payments.entrypoints.transaction_http import COMMAND_RESPONSES, respond

router = APIRouter(tags=["refunds"])
OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
RefundId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


class IssueRefund(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Money = Field(description="what goes back, e.g. {\"amount\": 30000, \"currency\": \"TWD\"}")
    reason: Annotated[str, Field(min_length=1, max_length=500, description="why the money goes back")]


class RetryRefund(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=500)]


def _svc(request: Request) -> RefundsService:
    service: RefundsService = request.app.state.payments.service.refunds
    return service


@router.post("/payments/{order_id}/refunds", responses={
    **COMMAND_RESPONSES, 422: {"description": "a field breaks a rule: no Idempotency-Key, an amount above what can "
                                              "still be refunded, a wrong currency; nothing stored"}})
async def issue_refund(order_id: OrderId, body: IssueRefund, ctx: Ctx, request: Request,
                       response: Response) -> dict[str, Any]:
    """Refund part or all of what a settled or cancelled order paid, back along the original path (third
    party > member balance), never above what was paid online less what already went back. Requires an
    Idempotency-Key: the same key again (even concurrently) returns the first refund and issues nothing."""
    if not ctx.idempotency_key:
        raise RuleViolation("Idempotency-Key", "is required to issue a refund, so that a retried or doubled "
                                               "request cannot refund twice")
    payments = request.app.state.payments
    return respond(response, await _svc(request).issue(order_id, body.amount, body.reason, ctx,
                                                       payments.service.publish_contract))


@router.get("/payments/{order_id}/refunds")
async def order_refunds(order_id: OrderId, request: Request) -> dict[str, Any]:
    """The order's refunds: what goes back, to which payment, and where each one is (requested, pending,
    succeeded, failed)."""
    return {"order_id": order_id, "refunds": await _svc(request).of_order(order_id)}


@router.get("/refunds")
async def refunds(request: Request, status: RefundStatus | None = None,
                  provider: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z0-9_]+$")] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    """Refunds by status, oldest first. `status=requested&provider=stripe` is the provider connector's queue;
    `status=failed` the operators' (each waits for a retry)."""
    return {"refunds": await _svc(request).search(status, provider, limit)}


@router.get("/refunds/{refund_id}", responses={404: {"description": "no such refund"}})
async def refund(refund_id: RefundId, request: Request) -> dict[str, Any]:
    """One refund."""
    return await _svc(request).get(refund_id)


@router.post("/refunds/{refund_id}/retry", responses=COMMAND_RESPONSES)
async def retry_refund(refund_id: RefundId, body: RetryRefund, ctx: Ctx, request: Request,
                       response: Response) -> dict[str, Any]:
    """Ask the provider again for a failed refund (platform or service role)."""
    return respond(response, await _svc(request).retry(refund_id, body.reason, ctx))


MerchantId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


@router.get("/merchants/{merchant_id}/record", tags=["merchants"])
async def merchant_record(merchant_id: MerchantId, request: Request) -> dict[str, Any]:
    """The merchant's record (seed 五): merchant-fault cancellations, and the compensation the platform owes
    the merchant for late customer-fault cancellations of unprepaid orders."""
    from services.payments.application.service import merchant_record as record

    async with request.app.state.payments.store.pool.acquire() as conn:
        return await record(conn, merchant_id)
