"""Event conventions, the payments contract, and field validation of the command models."""

from __future__ import annotations

import inspect
from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from libs.domain.events import DomainEvent, registry
from services.orders.domain import commands as cmd
from services.orders.domain import events as orders_events
from services.payments.domain import events as pay
from tests.unit.orders import ADDRESS, NOW, SLOT, twd

AGGREGATE_ID_FIELDS = {"order_id", "bill_id", "customer_id", "staff_id", "conditions_id"}


def concrete_events(module: Any) -> list[type[DomainEvent]]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, DomainEvent) and c.__module__ == module.__name__ and "abstract" not in c.__dict__]


ORDERS_EVENTS = concrete_events(orders_events)
PAYMENTS_EVENTS = concrete_events(pay)


CONTRACT = {"PaymentAttemptStarted", "PaymentAttemptFailed", "PrepaymentCaptured", "BillSettled"}


def test_the_contract_lists_the_expected_events() -> None:
    # The orders service reacts to exactly these payments events (its payments_reactions);
    # the payments module defines more (its own aggregates' events).
    assert CONTRACT <= {c.__name__ for c in PAYMENTS_EVENTS}
    assert len(ORDERS_EVENTS) == 26


@pytest.mark.parametrize("cls", ORDERS_EVENTS + PAYMENTS_EVENTS, ids=lambda c: c.__name__)
def test_event_conventions(cls: type[DomainEvent]) -> None:
    assert cls.event_type == cls.__name__
    assert cls.schema_version == 1
    assert registry.get(cls.event_type) is cls
    assert cls.topic == ("orders.events" if cls in ORDERS_EVENTS else "payments.events")
    assert cls.model_config.get("frozen") is True and cls.model_config.get("extra") == "forbid"
    assert AGGREGATE_ID_FIELDS & set(cls.model_fields)
    cls.model_json_schema()  # `make schemas` must be able to render every event


@pytest.mark.parametrize("cls", PAYMENTS_EVENTS, ids=lambda c: c.__name__)
def test_payments_events_name_order_and_bill(cls: type[DomainEvent]) -> None:
    assert {"order_id", "bill_id"} <= set(cls.model_fields)


def test_naive_datetimes_and_unknown_fields_are_refused_in_events() -> None:
    with pytest.raises(ValidationError):
        orders_events.OrderAccepted(order_id="o-1", merchant_id="m-1", at=datetime(2025, 3, 10, 9, 0))
    with pytest.raises(ValidationError):
        orders_events.OrderAccepted(order_id="o-1", merchant_id="m-1", at=NOW, note="x")


def tender(kind: str, amount: int) -> pay.Tender:
    return pay.Tender(kind=kind, amount=twd(amount), reference=f"{kind}-ref")


def test_prepayment_tenders_must_add_up() -> None:
    ok = pay.PrepaymentCaptured(order_id="o-1", bill_id="b-1", amount=twd(120000), captured_at=NOW,
                                tenders=[tender("voucher", 20000), tender("third_party", 100000)])
    assert pay.transaction_stream_id(ok.order_id) == "transaction-o-1"
    with pytest.raises(ValidationError, match="add up"):
        pay.PrepaymentCaptured(order_id="o-1", bill_id="b-1", amount=twd(120000), captured_at=NOW,
                               tenders=[tender("third_party", 100000)])


def test_settlement_tenders_pay_the_total_and_amounts_are_not_negative() -> None:
    pay.BillSettled(order_id="o-1", bill_id="b-2", total=twd(90000), refunded=twd(30000), collected=twd(0),
                    tenders=[tender("member_balance", 90000)], settled_at=NOW)
    with pytest.raises(ValidationError, match="refunded"):
        pay.BillSettled(order_id="o-1", bill_id="b-2", total=twd(90000), refunded=twd(-1), collected=twd(0),
                        tenders=[tender("member_balance", 90000)], settled_at=NOW)
    with pytest.raises(ValidationError):
        pay.PaymentAttemptFailed(order_id="o-1", bill_id="b-1", attempt_id="a-1", reason="lost", at=NOW)


# --- commands ---------------------------------------------------------------------------------------


def place_order(**changes: Any) -> cmd.PlaceOrder:
    data: dict[str, Any] = {"customer_id": "c-1", "staff_id": "s-1", "service_code": "dishwash-standard",
                            "slot": SLOT.model_dump(), "address": ADDRESS.model_dump()}
    return cmd.PlaceOrder.model_validate({**data, **changes})


def error_locs(exc: ValidationError) -> set[tuple[Any, ...]]:
    return {tuple(e["loc"]) for e in exc.errors()}


def test_a_valid_place_order_has_sensible_defaults() -> None:
    command = place_order()
    assert command.voucher_ids == [] and command.use_member_balance is False and command.currency is None


@pytest.mark.parametrize("changes, loc", [
    ({"customer_id": ""}, ("customer_id",)),
    ({"customer_id": "c 1"}, ("customer_id",)),
    ({"staff_id": "s" * 65}, ("staff_id",)),
    ({"voucher_ids": ["v-1", "v/2"]}, ("voucher_ids", 1)),
    ({"currency": "twd"}, ("currency",)),
    ({"address": {**ADDRESS.model_dump(), "city": ""}}, ("address", "city")),
    ({"slot": {"start": "2025-03-11T14:00:00", "end": "2025-03-11T16:00:00+08:00"}}, ("slot", "start")),
    ({"tip": 100}, ("tip",)),
])
def test_bad_place_order_input_names_the_field(changes: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        place_order(**changes)
    assert loc in error_locs(caught.value)


def test_repeated_vouchers_are_refused() -> None:
    with pytest.raises(ValidationError, match="voucher"):
        place_order(voucher_ids=["v-1", "v-1"])


@pytest.mark.parametrize("model, data, loc", [
    (cmd.PushBill, {"merchant_id": "m-1", "actual_minutes": 0}, ("actual_minutes",)),
    (cmd.PushBill, {"merchant_id": "m-1", "actual_minutes": 1441}, ("actual_minutes",)),
    (cmd.PushBill, {"merchant_id": "m-1", "actual_minutes": 60, "materials": [
        {"code": "x", "description": "X", "quantity": 0, "unit_price": {"amount": 100, "currency": "TWD"}}]},
     ("materials", 0, "quantity")),
    (cmd.PushBill, {"merchant_id": "m-1", "actual_minutes": 60, "materials": [
        {"code": "x", "description": "X", "quantity": 1, "unit_price": {"amount": 1.5, "currency": "TWD"}}]},
     ("materials", 0, "unit_price", "amount")),
    (cmd.AdjustBill, {"merchant_id": "m-1", "actual_minutes": 60, "reason": ""}, ("reason",)),
    (cmd.ConfirmBill, {"customer_id": "c-1", "revision": 0}, ("revision",)),
    (cmd.CancelOrder, {"cancelled_by": "system", "reason_code": "x"}, ("cancelled_by",)),
    (cmd.CancelOrder, {"cancelled_by": "customer", "reason_code": "Not Snake"}, ("reason_code",)),
    (cmd.CancelOrder, {"cancelled_by": "platform", "reason_code": "x", "fault_party": "weather"},
     ("fault_party",)),
    (cmd.RecordCreditScore, {"customer_id": "c-1", "score": 1001, "source": "b"}, ("score",)),
    (cmd.SetPlatformConditions, {"load_pct": -1}, ("load_pct",)),
])
def test_command_field_constraints(model: type[cmd.Command], data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    assert loc in error_locs(caught.value)


def test_a_merchant_cancellation_names_the_merchant() -> None:
    with pytest.raises(ValidationError, match="merchant_id"):
        cmd.CancelOrder(cancelled_by="merchant", reason_code="staff_sick")
    command = cmd.CancelOrder(cancelled_by="merchant", reason_code="staff_sick", merchant_id="m-1")
    assert command.fault_party is None
