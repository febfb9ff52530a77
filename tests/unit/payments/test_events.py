"""The payments events: conventions, the backward-compatible contract, and the plan models' invariants."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import ValidationError

from libs.domain.events import DomainEvent, registry
from services.payments.domain import events as pay
from tests.unit.payments import NOW, PREPAID, card, cash, twd, voucher

TRANSACTION_EVENTS = [c for _, c in inspect.getmembers(pay, inspect.isclass)
                      if issubclass(c, pay.TransactionStreamEvent) and "abstract" not in c.__dict__]


def test_the_transaction_events() -> None:
    assert {c.__name__ for c in TRANSACTION_EVENTS} == {
        "TransactionOpened", "TransactionPaymentAttempted", "TransactionAttemptAbandoned",
        "TransactionPrepaymentReserved", "TransactionReservationReleased",
        "TransactionPrepaymentCaptured", "TransactionBilled", "TransactionSettled", "TransactionCashConfirmed",
        "TransactionRefunded", "TransactionVoided", "CompensationVoucherGranted", "MerchantCompensationGranted",
        "MerchantFaultRecorded", "TransactionRefundsFrozen", "TransactionRefundsUnfrozen", "TransactionPaymentToReturn",
        "TransactionRefundsHeld", "TransactionChargedBack", "TransactionHeldRefundsReleased",
            "TransactionRefundIssued", "TransactionExternalRefund"}


@pytest.mark.parametrize("cls", TRANSACTION_EVENTS, ids=lambda c: c.__name__)
def test_event_conventions(cls: type[DomainEvent]) -> None:
    assert cls.event_type == cls.__name__
    assert registry.get(cls.event_type) is cls  # registered, and no other service uses the name
    assert cls.topic == "payments.events" and cls.schema_version == 1
    assert cls.model_config.get("frozen") is True and cls.model_config.get("extra") == "forbid"
    assert {"order_id", "bill_id"} <= set(cls.model_fields)  # every event names its order and bill
    cls.model_json_schema()


# --- the contract stays backward compatible ----------------------------------------------------------------


def test_a_stored_tender_without_expiry_still_reads() -> None:
    old = {"kind": "voucher", "amount": {"amount": 10000, "currency": "TWD"}, "reference": "v-1"}
    assert pay.Tender.model_validate(old).expires_at is None
    captured = pay.PrepaymentCaptured.model_validate({
        "order_id": "o-1", "bill_id": "b-1", "amount": {"amount": 10000, "currency": "TWD"},
        "tenders": [old], "captured_at": NOW.isoformat()})
    assert captured.tenders[0].kind is pay.TenderKind.VOUCHER


def test_cash_is_a_tender_kind_and_expiry_is_for_vouchers_only() -> None:
    assert pay.TenderKind("cash") is pay.TenderKind.CASH and pay.TenderKind.CASH.is_money
    assert not pay.TenderKind.VOUCHER.is_money
    assert voucher(100, expires_at=NOW).expires_at == NOW
    with pytest.raises(ValidationError, match="voucher tenders only"):
        pay.Tender(kind="third_party", amount=twd(100), reference="pi_1", expires_at=NOW)
    pay.BillSettled(order_id="o-1", bill_id="b-2", total=twd(100), refunded=twd(0), collected=twd(100),
                    tenders=[cash(100)], settled_at=NOW)


# --- value objects ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, words", [
    ({"kind": "third_party", "amount": twd(100), "reference": "pi_1", "tender": card(50)}, "never more than"),
    ({"kind": "third_party", "amount": twd(0), "reference": "pi_1", "tender": card(50)}, "positive"),
    ({"kind": "member_balance", "amount": twd(10), "reference": "pi_1", "tender": card(50)}, "must match"),
])
def test_a_refund_goes_back_to_its_own_tender(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        pay.Refund(**data)


def test_rates_are_fractions_up_to_one() -> None:
    assert str(pay.Rate(numerator=1, denominator=2)) == "1/2"
    assert pay.Rate(numerator=3, denominator=3).is_full
    with pytest.raises(ValidationError):
        pay.Rate(numerator=3, denominator=2)


def test_settled_event_must_match_its_plan() -> None:
    from services.payments.domain.settlement import plan_settlement

    plan = plan_settlement(twd(150000), PREPAID)
    good: dict[str, Any] = {
        "order_id": "o-1", "bill_id": "b-2", "total": twd(150000), "plan": plan, "method": "cash",
        "collection": cash(30000), "collected": twd(30000), "refunded": twd(0),
        "tenders": [*plan.applied, cash(30000)], "awaiting_cash_confirmation": True, "at": NOW}
    pay.TransactionSettled(**good)
    with pytest.raises(ValidationError, match="cash collection awaits"):
        pay.TransactionSettled(**{**good, "awaiting_cash_confirmation": False})
    with pytest.raises(ValidationError, match="shortfall"):
        pay.TransactionSettled(**{**good, "collected": twd(1)})
    with pytest.raises(ValidationError, match="add up"):
        pay.TransactionSettled(**{**good, "tenders": plan.applied})
