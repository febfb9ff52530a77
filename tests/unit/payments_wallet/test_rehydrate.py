"""Replay and event conventions: rebuilding from stored events gives the state the commands produced."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from libs.domain.aggregate import Aggregate
from libs.domain.events import DomainEvent, registry
from services.payments.domain import voucher as voucher_module
from services.payments.domain import wallet as wallet_module
from services.payments.domain.voucher import CompensationGrant, Voucher, VoucherCategory, VoucherStatus, choose_voucher
from services.payments.domain.wallet import Wallet
from tests.unit.payments_wallet import (
    BONUS_FIRST,
    CUSTOMER,
    EXPIRES_AT,
    LINE,
    NOW,
    ORDER,
    ORDER_AMOUNT,
    POLICY,
    amount_terms,
    discount_terms,
    issue,
    round_trip,
    state,
    twd,
)


def wallet_story() -> Aggregate:
    wallet = Wallet.open(CUSTOMER, "TWD", NOW)
    wallet.top_up(twd(300000), "tu-1", NOW, POLICY)
    wallet.top_up(twd(100000), "tu-2", NOW, POLICY)
    wallet.debit(twd(120000), ORDER, "pay-1", NOW, POLICY)
    wallet.debit(twd(50000), "o-2", "pay-2", NOW, BONUS_FIRST)
    wallet.credit_refund(twd(60000), ORDER, "pay-1", NOW, reference="rf-1")
    wallet.credit_refund(twd(50000), "o-2", "pay-2", NOW)
    wallet.withdraw_paid_in("tu-2", twd(40000), "wd-1", NOW)
    assert wallet.balance.total == twd(450000 - 120000 - 50000 + 110000 - 40000 - 4000)
    wallet.hold(twd(30000), "o-3", "prepay-o-3", NOW, POLICY)  # reserved, then captured and partly refunded
    wallet.capture_hold("o-3", "prepay-o-3", NOW)
    wallet.credit_refund(twd(10000), "o-3", "prepay-o-3", NOW)
    wallet.hold(twd(20000), "o-4", "prepay-o-4", NOW, BONUS_FIRST)  # reserved, then released
    wallet.release_hold("o-4", "prepay-o-4", "reservation cancelled", NOW)
    wallet.hold(twd(5000), "o-4", "prepay-o-4", NOW, POLICY)  # reserved again, still held
    assert wallet.balance.total == twd(346000 - 30000 + 10000 - 5000) and wallet.held == twd(5000)
    return wallet


def voucher_story() -> Aggregate:
    voucher = issue("v-1", discount_terms(1500, cap=15000), saved=False)
    choice = choose_voucher([voucher], order_amount=ORDER_AMOUNT, product_line=LINE, at=NOW, using_balance=True,
                            preference=POLICY.binding_preference, policy_version=POLICY.version)
    voucher.bind(ORDER, customer_id=CUSTOMER, order_amount=ORDER_AMOUNT, product_line=LINE, using_balance=True,
                 at=NOW, choice=choice)
    voucher.release(ORDER, "the order was cancelled before capture", NOW)
    voucher.bind("o-2", customer_id=CUSTOMER, order_amount=ORDER_AMOUNT, product_line=LINE, using_balance=False,
                 at=NOW)
    voucher.redeem("o-2", twd(100000), NOW)
    voucher.return_("o-2", "merchant cancelled", EXPIRES_AT + timedelta(hours=1))
    voucher.expire(EXPIRES_AT + timedelta(hours=1))
    voucher.extend(EXPIRES_AT + timedelta(days=14), "came back expired (seed 五)", EXPIRES_AT + timedelta(hours=2))
    assert voucher.status is VoucherStatus.RETURNED
    return voucher


def compensation_voucher() -> Aggregate:
    return Voucher.issue("v-comp-1", customer_id=CUSTOMER, category=VoucherCategory.COMPENSATION,
                         terms=amount_terms(20000), issued_by="system", at=NOW,
                         compensation=CompensationGrant(rule="no_merchant_available", order_id=ORDER))


STORIES: dict[str, Callable[[], Aggregate]] = {
    "wallet": wallet_story, "voucher": voucher_story, "compensation-voucher": compensation_voucher}


@pytest.mark.parametrize("story", list(STORIES), ids=list(STORIES))
def test_rehydrate_from_stored_events_equals_the_command_path(story: str) -> None:
    aggregate = STORIES[story]()
    events = aggregate.pending
    replayed = type(aggregate).rehydrate(aggregate.id, round_trip(events))
    assert state(replayed) == state(aggregate)
    assert replayed.version == len(events) and replayed.pending == []
    assert replayed.stream_id == aggregate.stream_id


def test_apply_refuses_foreign_events() -> None:
    with pytest.raises(TypeError):
        Wallet("c-1").apply(issue(saved=False).pending[0])
    with pytest.raises(TypeError):
        Voucher("v-1").apply(Wallet.open(CUSTOMER, "TWD", NOW).pending[0])


def concrete_events(module: Any) -> list[type[DomainEvent]]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, DomainEvent) and c.__module__ == module.__name__ and "abstract" not in c.__dict__]


WALLET_EVENTS = concrete_events(wallet_module)
VOUCHER_EVENTS = concrete_events(voucher_module)


def test_the_modules_define_the_expected_events() -> None:
    assert {c.__name__ for c in WALLET_EVENTS} == {
        "WalletOpened", "WalletToppedUp", "WalletDebited", "WalletRefundCredited", "WalletPaidInWithdrawn",
        "WalletAmountHeld", "WalletHoldCaptured", "WalletHoldReleased"}
    assert {c.__name__ for c in VOUCHER_EVENTS} == {
        "VoucherIssued", "VoucherBound", "VoucherReleased", "VoucherRedeemed", "VoucherReturned",
        "VoucherExpired", "VoucherExtended"}


@pytest.mark.parametrize("cls", WALLET_EVENTS + VOUCHER_EVENTS, ids=lambda c: c.__name__)
def test_event_conventions(cls: type[DomainEvent]) -> None:
    assert cls.event_type == cls.__name__
    assert cls.event_type.startswith(("Wallet", "Voucher"))
    assert cls.schema_version == 1 and cls.topic == "payments.events"
    assert registry.get(cls.event_type) is cls
    assert cls.model_config.get("frozen") is True and cls.model_config.get("extra") == "forbid"
    assert ({"customer_id"} if cls in WALLET_EVENTS else {"voucher_id"}) <= set(cls.model_fields)
    cls.model_json_schema()  # `make schemas` must be able to render every event
    assert "at" in cls.model_fields
