"""The Dispute aggregate: lifecycle, out-of-order and repeated upstream facts, the evidence deadline."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from libs.domain.errors import NotFound, RuleViolation
from services.payments.domain import dispute as dm
from services.payments.domain.dispute import Dispute, DisputeOutcome, DisputeState, state_for
from services.payments.domain.upstream import normalise, parse_event
from services.payments.domain.upstream_events import OrderRef, ProviderAmount, UpstreamDisputeFact
from tests.unit.payments_upstream import (
    CHARGE,
    CREATED,
    DISPUTE,
    DUE_BY,
    ORDER,
    PI,
    at,
    dispute,
    event,
    round_trip,
    twd,
)

S = DisputeState
OPENED_AT = at(CREATED + 86400)
LATER_DUE = DUE_BY + 7 * 86400


def fact(type_: str, *, n: int, **kwargs: Any) -> UpstreamDisputeFact:
    """The fact of a charge.dispute.* event; `n` orders the events in time (created = CREATED + n hours)."""
    f = normalise(parse_event(event(type_, dispute(**kwargs), event_id=f"evt_1TestDispute{n:011d}",
                                    created=CREATED + 86400 + n * 3600)))
    assert isinstance(f, UpstreamDisputeFact)
    return f


CREATED_F = fact("charge.dispute.created", n=0)
INQUIRY_F = fact("charge.dispute.created", n=0, status="warning_needs_response")
ESCALATED_F = fact("charge.dispute.updated", n=1, status="needs_response", due_by=LATER_DUE)
REVIEW_F = fact("charge.dispute.updated", n=2, status="under_review", submissions=1)
WON_F = fact("charge.dispute.closed", n=3, status="won", submissions=1)
LOST_F = fact("charge.dispute.closed", n=3, status="lost", submissions=1)
# After an inquiry escalates, every later snapshot of the dispute carries the new deadline.
INQ_REVIEW_F = fact("charge.dispute.updated", n=2, status="under_review", submissions=1, due_by=LATER_DUE)
INQ_WON_F = fact("charge.dispute.closed", n=3, status="won", submissions=1, due_by=LATER_DUE)


def replay(*facts: UpstreamDisputeFact) -> Dispute:
    d = Dispute(DISPUTE)
    for f in facts:
        d.observe(f)
    return d


def types(d: Dispute) -> list[str]:
    return [type(e).__name__ for e in d.pending]


def test_stripe_statuses_map_onto_the_lifecycle() -> None:
    assert [state_for(s) for s in ("warning_needs_response", "needs_response", "warning_under_review",
                                   "under_review", "won", "warning_closed", "lost")] == [
        S.WARNING_NEEDS_RESPONSE, S.NEEDS_RESPONSE, S.UNDER_REVIEW, S.UNDER_REVIEW, S.WON, S.WON, S.LOST]
    assert state_for("prevented") is None and state_for("something_new") is None
    assert [s.rank for s in S] == [0, 1, 2, 3, 3]


def test_the_lifecycle_needs_response_under_review_won() -> None:
    d = Dispute(DISPUTE)
    assert not d.exists and not d.is_open
    assert d.observe(CREATED_F)
    assert d.state is S.NEEDS_RESPONSE and d.is_open and d.freezes_refunds
    assert d.observe(REVIEW_F) and d.state is S.UNDER_REVIEW and d.is_open
    assert d.observe(WON_F)
    assert d.state is S.WON and d.outcome is DisputeOutcome.WON and not d.is_open and not d.freezes_refunds
    assert types(d) == ["DisputeOpened", "DisputeStateChanged", "DisputeClosed"]
    opened = d.pending[0]
    assert isinstance(opened, dm.DisputeOpened)
    assert opened.amount == twd(298000) and opened.reason == "product_not_received"
    assert opened.order_ref == OrderRef(charge_id=CHARGE, payment_intent_id=PI) and opened.charge_id == CHARGE
    assert opened.opened_at == OPENED_AT and opened.provider_event_id == CREATED_F.provider_event_id
    assert d.closed_at == WON_F.occurred_at and d.stream_id == f"dispute-{DISPUTE}"
    assert dm.dispute_stream_id(DISPUTE) == d.stream_id and Dispute.category == "dispute"


def test_an_inquiry_escalates_then_is_lost() -> None:
    d = replay(INQUIRY_F, ESCALATED_F, INQ_REVIEW_F, LOST_F)
    assert [s for s, _ in d.state_history] == [S.WARNING_NEEDS_RESPONSE, S.NEEDS_RESPONSE, S.UNDER_REVIEW, S.LOST]
    assert d.outcome is DisputeOutcome.LOST


def test_a_stale_update_is_ignored_and_records_nothing() -> None:
    d = replay(CREATED_F, REVIEW_F)
    d.mark_saved()
    # "needs_response" delivered after "under_review": upstream delivery is out of order.
    assert d.observe(CREATED_F) is False
    assert d.observe(ESCALATED_F) is False
    assert d.update("needs_response", at=at(CREATED)) is False
    assert d.update(S.UNDER_REVIEW, at=at(CREATED)) is False  # the same state again
    assert d.pending == [] and d.state is S.UNDER_REVIEW


def test_every_arrival_order_ends_in_the_same_state() -> None:
    results = set()
    for perm in itertools.permutations([INQUIRY_F, ESCALATED_F, INQ_REVIEW_F, INQ_WON_F]):
        d = replay(*perm, *perm)  # and every fact delivered twice
        results.add((d.state, d.outcome, d.evidence_due_by))
    assert results == {(S.WON, DisputeOutcome.WON, at(LATER_DUE))}


def test_a_closed_dispute_stays_closed() -> None:
    d = replay(CREATED_F, LOST_F)
    d.mark_saved()
    assert d.observe(REVIEW_F) is False
    assert d.observe(WON_F) is False  # a contradicting late report is not applied
    assert d.close("won", at=at(CREATED)) is False
    assert d.pending == [] and d.outcome is DisputeOutcome.LOST


def test_closing_requires_won_or_lost() -> None:
    d = replay(CREATED_F)
    with pytest.raises(RuleViolation) as exc:
        d.close("under_review", at=at(CREATED))
    assert exc.value.field == "outcome"
    with pytest.raises(RuleViolation) as exc:
        d.update("won", at=at(CREATED))
    assert exc.value.field == "state"
    with pytest.raises(RuleViolation):
        d.update("settled", at=at(CREATED))


def test_a_dispute_first_seen_decided_is_opened_in_the_state_it_passed_then_closed() -> None:
    with_evidence = replay(WON_F)
    assert types(with_evidence) == ["DisputeOpened", "DisputeClosed"]
    assert with_evidence.pending[0].state is S.UNDER_REVIEW  # type: ignore[attr-defined]
    without = replay(fact("charge.dispute.closed", n=3, status="lost", submissions=0))
    assert without.pending[0].state is S.NEEDS_RESPONSE  # type: ignore[attr-defined]
    inquiry = replay(fact("charge.dispute.closed", n=3, status="warning_closed"))
    assert inquiry.pending[0].state is S.WARNING_NEEDS_RESPONSE  # type: ignore[attr-defined]
    assert inquiry.outcome is DisputeOutcome.WON
    # A later "created" changes nothing.
    assert with_evidence.observe(CREATED_F) is False


def test_a_prevented_dispute_stays_open_for_a_person_to_look_at() -> None:
    d = replay(CREATED_F, fact("charge.dispute.closed", n=3, status="prevented"))
    assert d.state is S.NEEDS_RESPONSE and d.is_open and types(d) == ["DisputeOpened"]


def test_the_evidence_deadline_is_kept() -> None:
    d = replay(CREATED_F)
    assert d.evidence_due_by == at(DUE_BY)
    d.observe(fact("charge.dispute.updated", n=2, status="under_review", submissions=1, due_by=None))
    assert d.evidence_due_by == at(DUE_BY)  # an update without a deadline keeps it
    closed = replay(INQUIRY_F, ESCALATED_F)
    assert closed.evidence_due_by == at(LATER_DUE)  # an escalation sets the new one
    assert not d.evidence_overdue(at(DUE_BY + 1))  # evidence already submitted
    waiting = replay(CREATED_F)
    assert not waiting.evidence_overdue(at(DUE_BY)) and waiting.evidence_overdue(at(DUE_BY + 1))


def test_the_order_is_linked_once_resolved() -> None:
    d = replay(CREATED_F)
    assert d.order_id is None
    assert d.link_order(ORDER, at(CREATED)) and d.order_id == ORDER
    assert d.link_order(ORDER, at(CREATED)) is False
    with pytest.raises(RuleViolation):
        d.link_order("KOL-20250512-00002", at(CREATED))
    with_metadata = fact("charge.dispute.created", n=0)
    named = with_metadata.model_copy(update={"order_ref": OrderRef(order_id=ORDER, charge_id=CHARGE)})
    assert replay(named).order_id == ORDER


def test_rehydration_from_stored_events_gives_the_same_state() -> None:
    d = replay(INQUIRY_F, ESCALATED_F, INQ_REVIEW_F, INQ_WON_F)
    d.link_order(ORDER, at(CREATED + 10 * 86400))
    again = Dispute.rehydrate(DISPUTE, round_trip(d.pending))
    assert {k: v for k, v in vars(again).items() if k not in ("_pending", "version")} == {
        k: v for k, v in vars(d).items() if k not in ("_pending", "version")}
    assert again.version == 5


def test_commands_on_a_dispute_that_does_not_exist() -> None:
    d = Dispute(DISPUTE)
    with pytest.raises(NotFound):
        d.update("under_review", at=at(CREATED))
    with pytest.raises(NotFound):
        d.close("won", at=at(CREATED))
    with pytest.raises(RuleViolation):
        Dispute("dp_other").observe(CREATED_F)


def test_open_refuses_a_decided_state_and_a_second_opening() -> None:
    common: dict[str, Any] = {"order_ref": OrderRef(charge_id=CHARGE), "amount": twd(1), "reason": "general",
                              "provider_amount": ProviderAmount(amount=1, currency="twd"), "opened_at": OPENED_AT,
                              "at": OPENED_AT}
    with pytest.raises(RuleViolation):
        Dispute.open(DISPUTE, state="won", **common)
    d = Dispute.open(DISPUTE, state="needs_response", evidence_due_by=OPENED_AT + timedelta(days=7), **common)
    assert d.charge_id == CHARGE and d.is_open
    with pytest.raises(RuleViolation):
        d.observe(CREATED_F.model_copy(update={"dispute_id": "dp_x"}))
    with pytest.raises(RuleViolation):
        d._open(state=S.NEEDS_RESPONSE, charge_id=None, payment_intent_id=None, evidence_due_by=None,
                provider_event_id=None, **common)
