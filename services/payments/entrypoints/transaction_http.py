"""HTTP API of an order's transaction: the view, cashier attempts, previews, prepaying with a
voucher and the member balance, collecting the shortfall and the merchant's cash confirmation.
Routes validate, build the call and dispatch to application/transactions.py."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from libs.application.unit_of_work import CommandResult
from libs.domain.money import Money
from libs.domain.types import Code, Id, Reference
from libs.http.context import Ctx
from services.orders.domain.events import FaultParty
from services.payments.application.transactions import TransactionsService
from services.payments.domain.checkout import CashierMethod
from services.payments.domain.events import FailureReason, TenderKind

router = APIRouter(prefix="/payments/{order_id}", tags=["transactions"])
OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
AttemptId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "the actor may not do this (X-Role / X-Actor named); nothing stored"},
    404: {"description": "the payments service knows no transaction of this order"},
    409: {"description": "not allowed in the transaction's state (named, with the allowed commands), an open "
                         "cashier attempt, or a version conflict; nothing stored"},
    422: {"description": "a field breaks a rule (named with the rule); nothing stored"},
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartAttempt(_Body):
    attempt_id: Id | None = Field(default=None, description="the cashier session's id; generated when omitted")
    amount: Money = Field(description="the whole prepayment (unpaid), the remainder of a reserved prepayment, or "
                                      "the bill's shortfall (billed)")
    method: CashierMethod


class AbandonAttempt(_Body):
    reason: FailureReason = Field(default=FailureReason.ABANDONED,
                                  description="abandoned: the customer came back from the cashier")


class SettleMethod(StrEnum):
    """How the shortfall is collected (seed 四)."""

    MEMBER_BALANCE = "member_balance"
    CASH = "cash"
    THIRD_PARTY = "third_party"


class Settle(_Body):
    method: SettleMethod = Field(description="member_balance or cash; third_party is refused here: it is "
                                             "collected by the provider's charge (cashier attempt + webhook)")
    reference: Reference | None = Field(default=None, description="cash: the receipt number (optional)")


class CashConfirmation(_Body):
    amount: Money | None = Field(default=None, description="the cash received; checked against the collection")


class Prepay(_Body):
    use_vouchers: bool = Field(default=False, description="bind the best voucher by the configured preference")
    use_balance: bool = Field(default=False, description="pay what the voucher leaves from the member balance")
    voucher_id: Id | None = Field(default=None, description="the customer's own choice of voucher (no auto-binding)")
    allow_remainder: bool = Field(default=False, description=(
        "when the voucher and the balance do not cover the prepayment, reserve them (voucher bound, balance held) "
        "and pay the remainder by card at the cashier (POST /payments/{order}/attempts for exactly the remainder); "
        "otherwise nothing is applied (422)"))


class CancelReservation(_Body):
    reason: Annotated[str, Field(min_length=1, max_length=300)] | None = Field(
        default=None, description="why the reservation is cancelled (kept with the release)")


def respond(response: Response, result: CommandResult) -> dict[str, Any]:
    """The command's response; a replay of an Idempotency-Key is marked, the ETag is the transaction version
    (for If-Match)."""
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    txn = result.response.get("transaction")
    if isinstance(txn, dict) and "version" in txn:
        response.headers["ETag"] = f'"{txn["version"]}"'
    return result.response


def _svc(request: Request) -> TransactionsService:
    service: TransactionsService = request.app.state.payments.transactions
    return service


@router.get("", responses={404: COMMAND_RESPONSES[404]})
async def transaction(order_id: OrderId, request: Request) -> dict[str, Any]:
    """The order's transaction: status (with label_zh), allowed commands, tenders, bill, settlement, cancellation."""
    return await _svc(request).view(order_id)


@router.post("/attempts", responses=COMMAND_RESPONSES)
async def start_attempt(order_id: OrderId, body: StartAttempt, ctx: Ctx, request: Request,
                        response: Response) -> dict[str, Any]:
    """Open the cashier for the prepayment or the shortfall (order and bill go to 處理中)."""
    return respond(response, await _svc(request).start_attempt(order_id, body.attempt_id, body.amount, body.method,
                                                               ctx))


@router.post("/attempts/{attempt_id}/abandon", responses=COMMAND_RESPONSES)
async def abandon_attempt(order_id: OrderId, attempt_id: AttemptId, ctx: Ctx, request: Request, response: Response,
                          body: AbandonAttempt | None = None) -> dict[str, Any]:
    """End the open cashier attempt unpaid: the order and its bill go back to pending (待預付 / 待處理)."""
    reason = (body or AbandonAttempt()).reason
    return respond(response, await _svc(request).abandon_attempt(order_id, attempt_id, reason, ctx))


@router.get("/settlement-preview", responses={404: COMMAND_RESPONSES[404], 409: COMMAND_RESPONSES[409]})
async def settlement_preview(order_id: OrderId, request: Request) -> dict[str, Any]:
    """What settling the billed order now does (多退少補) and which methods can collect the shortfall now."""
    return await _svc(request).settlement_preview(order_id)


@router.get("/cancellation-preview", responses={404: COMMAND_RESPONSES[404], 409: COMMAND_RESPONSES[409]})
async def cancellation_preview(
        order_id: OrderId, request: Request, fault_party: FaultParty,
        seconds_before_service_start: Annotated[int, Query(ge=-366 * 86400, le=366 * 86400)],
        reason_code: Annotated[Code | None, Query()] = None) -> dict[str, Any]:
    """Penalty, refunds, voucher returns and compensation a cancellation now would bring (policy at placement)."""
    return await _svc(request).cancellation_preview(order_id, fault_party.value, seconds_before_service_start,
                                                    reason_code or "")


@router.get("/prepay-preview", responses={404: COMMAND_RESPONSES[404], 409: COMMAND_RESPONSES[409],
                                          422: COMMAND_RESPONSES[422]})
async def prepay_preview(order_id: OrderId, request: Request, use_vouchers: bool = False, use_balance: bool = False,
                         voucher_id: Annotated[Id | None, Query()] = None,
                         allow_remainder: bool = False) -> dict[str, Any]:
    """The voucher `prepay` would bind, the balance it would take and any third-party remainder; no events."""
    return await _svc(request).prepay_preview(order_id, use_vouchers=use_vouchers, use_balance=use_balance,
                                              voucher_id=voucher_id, allow_remainder=allow_remainder)


@router.post("/prepay", responses=COMMAND_RESPONSES)
async def prepay(order_id: OrderId, body: Prepay, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
    """Pay the prepayment with the best voucher and the member balance: all at once, or nothing (422), or with
    allow_remainder reserve them and leave the remainder to the card at the cashier."""
    return respond(response, await _svc(request).prepay(order_id, use_vouchers=body.use_vouchers,
                                                        use_balance=body.use_balance, voucher_id=body.voucher_id,
                                                        ctx=ctx, allow_remainder=body.allow_remainder))


@router.post("/prepay/cancel", responses=COMMAND_RESPONSES)
async def cancel_reservation(order_id: OrderId, ctx: Ctx, request: Request, response: Response,
                             body: CancelReservation | None = None) -> dict[str, Any]:
    """Cancel a reserved prepayment: the voucher binding and the wallet hold are released; the order stays 待預付."""
    return respond(response, await _svc(request).cancel_reservation(order_id, (body or CancelReservation()).reason,
                                                                    ctx))


@router.post("/settle", responses=COMMAND_RESPONSES)
async def settle(order_id: OrderId, body: Settle, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
    """Collect the bill's shortfall from the member balance (settled) or in cash (awaiting the merchant)."""
    return respond(response, await _svc(request).settle(order_id, TenderKind(body.method.value), body.reference,
                                                        ctx))


@router.post("/cash-confirmation", responses=COMMAND_RESPONSES)
async def cash_confirmation(order_id: OrderId, ctx: Ctx, request: Request, response: Response,
                            body: CashConfirmation | None = None) -> dict[str, Any]:
    """The order's merchant confirms receiving the cash (已確認); the order completes."""
    return respond(response, await _svc(request).confirm_cash(order_id, (body or CashConfirmation()).amount, ctx))
