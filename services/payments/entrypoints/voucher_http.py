"""HTTP API of vouchers (代金券): issuing (platform or service role), one voucher, a customer's vouchers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from libs.domain.types import Id
from libs.http.context import Ctx
from services.payments.application.vouchers import VouchersService
from services.payments.domain.voucher import CompensationGrant, VoucherCategory, VoucherTerms

router = APIRouter(tags=["vouchers"])
PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class IssueVoucher(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voucher_id: Id | None = Field(default=None, description="generated when omitted; issuing the same voucher "
                                                            "again under its id changes nothing")
    customer_id: Id
    category: VoucherCategory
    terms: VoucherTerms
    compensation: CompensationGrant | None = Field(default=None, description="compensation vouchers only: the rule")


def _svc(request: Request) -> VouchersService:
    service: VouchersService = request.app.state.payments.vouchers
    return service


@router.post("/vouchers", responses={403: {"description": "the role is not platform or service; nothing stored"},
                                     409: {"description": "another voucher exists under this id"},
                                     422: {"description": "a field breaks a rule (named); nothing stored"}})
async def issue_voucher(body: IssueVoucher, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
    """Issue a voucher to a customer (platform or service role only)."""
    result = await _svc(request).issue(body.voucher_id, body.customer_id, body.category, body.terms,
                                       body.compensation, ctx)
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return result.response


@router.get("/vouchers/{voucher_id}", responses={404: {"description": "no such voucher"}})
async def voucher(voucher_id: PathId, request: Request) -> dict[str, Any]:
    """One voucher: terms, status, current expiry and the order it is bound to or redeemed on."""
    return await _svc(request).get(voucher_id)


@router.get("/customers/{customer_id}/vouchers")
async def customer_vouchers(customer_id: PathId, request: Request) -> dict[str, Any]:
    """A customer's vouchers with status and expiry, soonest expiry first, and the binding preference."""
    return await _svc(request).of_customer(customer_id)
