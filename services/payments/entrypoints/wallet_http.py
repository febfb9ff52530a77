"""HTTP API of member wallets (會員余額, 充X送Y) and paying a prepayment with the balance."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from libs.domain.money import Money
from libs.http.context import Ctx

router = APIRouter(tags=["wallets"])
CustomerId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class TopUp(BaseModel):
    amount: Money = Field(description="paid-in money, e.g. {\"amount\": 100000, \"currency\": \"TWD\"}")
    reference: Annotated[str, Field(min_length=1, max_length=128, description="the payment of the top-up")]


@router.post("/wallets/{customer_id}/top-ups")
async def top_up(customer_id: CustomerId, body: TopUp, ctx: Ctx, request: Request) -> dict[str, Any]:
    """Top up a member wallet; the policy's bonus tier is added as bonus, kept apart from paid-in money."""
    return (await request.app.state.payments.wallets.top_up(customer_id, body.amount, body.reference, ctx)).response


@router.get("/wallets/{customer_id}")
async def wallet(customer_id: CustomerId, request: Request) -> dict[str, Any]:
    """A member wallet: paid-in, bonus and total balance."""
    return await request.app.state.payments.wallets.balance(customer_id)


@router.post("/payments/{order_id}/prepay-with-balance")
async def prepay_with_balance(order_id: OrderId, ctx: Ctx, request: Request) -> dict[str, Any]:
    """Pay an order's prepayment from the customer's member balance; the order then goes to dispatch."""
    return (await request.app.state.payments.wallets.prepay_with_balance(order_id, ctx)).response
