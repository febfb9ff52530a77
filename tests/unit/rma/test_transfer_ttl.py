"""Stock transfers (seed 001, case 4): a request carries a time-to-live; unanswered by then it is
escalated (once), and stays open to an answer; an answered transfer is never escalated. Stock never
goes below zero."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libs.domain.errors import Conflict, InvalidTransition
from services.rma.domain.events import StockTransferEscalated
from services.rma.domain.stock import StockLevel, stock_id
from services.rma.domain.transfer import TRANSFER_TRANSITIONS, StockTransfer, TransferStatus
from tests.unit.rma import HOME, NEW, NOW, RETAIL

TTL = 86400


def requested() -> StockTransfer:
    t = StockTransfer.request_unit("rma-1.1", rma_id="rma-1", sku=NEW, from_warehouse=RETAIL, to_warehouse=HOME,
                                   ttl_seconds=TTL, at=NOW)
    t.mark_saved()
    return t


def test_the_deadline_is_the_request_time_plus_the_ttl() -> None:
    t = requested()
    assert t.req.expires_at == NOW + timedelta(seconds=TTL) and t.status is TransferStatus.REQUESTED


TIMER = [
    pytest.param(timedelta(seconds=-1), False, id="the timer fires a second early: nothing"),
    pytest.param(timedelta(0), True, id="at the deadline: escalated"),
    pytest.param(timedelta(hours=5), True, id="late (the service was down): escalated"),
]


@pytest.mark.parametrize(("offset", "escalated"), TIMER)
def test_unanswered_by_the_ttl_escalates(offset: timedelta, escalated: bool) -> None:
    t = requested()
    at = t.req.expires_at + offset
    assert t.escalate_if_unanswered(at) is escalated
    assert (t.status is TransferStatus.ESCALATED) is escalated
    if escalated:
        [event] = t.pending
        assert isinstance(event, StockTransferEscalated)
        assert (event.requested_at, event.expires_at, event.from_warehouse) == (NOW, t.req.expires_at, RETAIL)
        assert t.escalate_if_unanswered(at + timedelta(seconds=1)) is False  # a second firing: nothing more


@pytest.mark.parametrize("answer", ["accept", "refuse"])
def test_an_answered_transfer_is_never_escalated(answer: str) -> None:
    t = requested()
    t.accept("on its way", NOW) if answer == "accept" else t.refuse("none left", NOW)
    t.mark_saved()
    assert t.escalate_if_unanswered(t.req.expires_at + timedelta(hours=1)) is False and not t.pending


def test_an_escalated_transfer_can_still_be_answered() -> None:
    t = requested()
    t.escalate_if_unanswered(t.req.expires_at)
    t.accept("found one", t.req.expires_at + timedelta(minutes=5))
    assert t.status is TransferStatus.ACCEPTED


def test_transfer_transitions() -> None:
    assert {s.value: sorted(c) for s, c in TRANSFER_TRANSITIONS.items()} == {
        "REQUESTED": ["accept", "escalate", "refuse"], "ESCALATED": ["accept", "refuse"],
        "ACCEPTED": [], "REFUSED": []}
    t = requested()
    t.refuse("none left", NOW)
    with pytest.raises(InvalidTransition) as err:
        t.accept("too late", NOW)
    assert err.value.details["current_state"] == "REFUSED" and err.value.details["allowed_commands"] == []


def test_stock_levels_never_go_below_zero_and_a_reservation_is_once_per_rma() -> None:
    level = StockLevel(stock_id(HOME, NEW))
    assert (level.warehouse_id, level.sku) == (HOME, NEW)
    level.set_level(1, "stock take", NOW)
    level.reserve("rma-1", NOW)
    level.reserve("rma-1", NOW)  # the same RMA again: nothing
    assert level.available == 0 and len(level.pending) == 2
    with pytest.raises(Conflict):
        level.reserve("rma-2", NOW)
    with pytest.raises(Conflict):
        level.transfer_out("t-1", RETAIL, NOW)
    level.transfer_in("t-2", RETAIL, NOW)
    assert level.available == 1
    assert level.set_level(1, "same count", NOW) is False
