"""The KolableOrder aggregate: decision permissions and supersession, idempotent imports, events."""

from __future__ import annotations

import inspect
from datetime import datetime

import pytest
from pydantic import ValidationError

from libs.domain.errors import Conflict, InvalidTransition, NotFound, RuleViolation
from libs.domain.events import DomainEvent, registry
from services.payments.domain.kolable import events as kev
from services.payments.domain.kolable.classify import DECISION_STATUSES, classify
from services.payments.domain.kolable.decisions import KolableOrder, PermissionDenied
from services.payments.domain.kolable.events import (
    DecisionKind,
    KolableClassification,
    KolableOrderClassified,
    KolableOrderImported,
    KolableRefundDecided,
)
from services.payments.domain.kolable.events import ReconciliationStatus as S
from services.payments.domain.kolable.importer import ImportedRow, parse_export
from tests.unit.kolable import T0, charge, csv_bytes, day, dispute, record, refund, round_trip

NOW = datetime(2025, 5, 21, 9, 0, tzinfo=T0.tzinfo)
IMPORT_ID = "a" * 64


def classification(status: S, order_id: str = "o1") -> KolableClassification:
    """A real classification of `status` for order o1, computed from facts."""
    facts = {
        S.PAID_VALID: ([record(order_id)], [charge(order_id)]),
        S.REFUNDED_NO_REBUY: ([record(order_id)], [charge(order_id), refund(order_id)]),
        S.REFUNDED_REBOUGHT: ([record(order_id), record("o2", ordered=day(3))],
                              [charge(order_id), refund(order_id), charge("o2", at=day(3))]),
        S.DISPUTE_PENDING: ([record(order_id)], [charge(order_id), dispute(order_id, "needs_response")]),
        S.DATA_GAP: ([record(order_id, student=None)], [charge(order_id)]),
    }[status]
    (c,) = [c for c in classify(*facts) if c.order_id == order_id]
    assert c.status is status
    return c


def order_in(status: S) -> KolableOrder:
    order = KolableOrder("o1")
    order.record_classification(classification(status), T0)
    order.mark_saved()
    return order


# --- decisions -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["importer", "reconciler", "auditor", "customer", "platform"])
def test_only_the_approver_may_decide(role: str) -> None:
    order = order_in(S.REFUNDED_NO_REBUY)
    with pytest.raises(PermissionDenied) as caught:
        order.decide("close", "student changed their mind", actor="someone", role=role, at=NOW)
    err = caught.value
    assert isinstance(err, RuleViolation) and err.code == "forbidden" and err.field == "role"
    assert "only the approver role may decide refunds" in err.rule and repr(role) in err.rule
    assert order.pending == [] and order.decisions == []


@pytest.mark.parametrize("status", sorted(DECISION_STATUSES))
@pytest.mark.parametrize("kind", list(DecisionKind))
def test_the_approver_decides_on_orders_that_need_a_decision(status: S, kind: DecisionKind) -> None:
    order = order_in(status)
    decision = order.decide(kind.value, "  per refund policy v2  ", actor="louis", role="approver", at=NOW)
    (event,) = order.pending
    assert isinstance(event, KolableRefundDecided)
    assert (event.decision, event.reason, event.actor, event.role, event.status_at_decision) == (
        kind, "per refund policy v2", "louis", "approver", status)
    assert event.cash_gap_at_decision == order.classification.cash_gap  # type: ignore[union-attr]
    assert decision.decision_id == "d1" and decision.supersedes is None
    assert order.decision_in_force == decision


@pytest.mark.parametrize("status", [S.PAID_VALID, S.REFUNDED_REBOUGHT])
def test_no_decision_on_orders_that_need_none(status: S) -> None:
    order = order_in(status)
    with pytest.raises(InvalidTransition) as caught:
        order.decide("pursue", "why not", actor="louis", role="approver", at=NOW)
    assert caught.value.state == status.value
    assert "decide" not in caught.value.allowed and "mark" in caught.value.allowed


def test_permission_is_checked_before_the_status() -> None:
    with pytest.raises(PermissionDenied):
        order_in(S.PAID_VALID).decide("pursue", "x", actor="huber", role="reconciler", at=NOW)


@pytest.mark.parametrize("decision, reason, field", [
    ("close", "", "reason"),
    ("close", "   ", "reason"),
    ("close", "x" * 501, "reason"),
    ("write_off", "because", "decision"),
])
def test_a_decision_needs_a_known_kind_and_a_reason(decision: str, reason: str, field: str) -> None:
    order = order_in(S.REFUNDED_NO_REBUY)
    with pytest.raises(RuleViolation) as caught:
        order.decide(decision, reason, actor="louis", role="approver", at=NOW)
    assert caught.value.field == field
    assert order.pending == []


def test_an_unclassified_order_cannot_be_decided() -> None:
    with pytest.raises(NotFound):
        KolableOrder("o1").decide("close", "x", actor="louis", role="approver", at=NOW)


def test_a_later_decision_supersedes_the_earlier_one_and_the_history_is_kept() -> None:
    order = order_in(S.REFUNDED_NO_REBUY)
    first = order.decide("close", "small amount", actor="louis", role="approver", at=NOW)
    second = order.decide("pursue", "student confirmed on LINE", actor="louis", role="approver", at=day(10),
                          supersedes="d1")
    third = order.decide(DecisionKind.ESCALATE, "student refuses", actor="louis", role="approver", at=day(11))
    assert [d.decision_id for d in order.decisions] == ["d1", "d2", "d3"]
    assert (second.supersedes, third.supersedes) == ("d1", "d2")
    assert order.current_decision == third and order.decisions[0] == first
    assert [e.decision for e in order.pending if isinstance(e, KolableRefundDecided)] == [
        DecisionKind.CLOSE, DecisionKind.PURSUE, DecisionKind.ESCALATE]


def test_superseding_a_decision_that_is_no_longer_current_is_a_conflict() -> None:
    order = order_in(S.REFUNDED_NO_REBUY)
    order.decide("close", "a", actor="louis", role="approver", at=NOW)
    order.decide("pursue", "b", actor="louis", role="approver", at=NOW)
    with pytest.raises(Conflict) as caught:
        order.decide("escalate", "c", actor="louis", role="approver", at=NOW, supersedes="d1")
    assert caught.value.details["current_decision_id"] == "d2"
    with pytest.raises(Conflict):
        order_in(S.DATA_GAP).decide("close", "x", actor="louis", role="approver", at=NOW, supersedes="d1")


def test_the_same_decision_again_records_nothing() -> None:
    order = order_in(S.DISPUTE_PENDING)
    first = order.decide("escalate", "chargeback over TWD 20,000", actor="louis", role="approver", at=NOW)
    order.mark_saved()
    again = order.decide("escalate", "chargeback over TWD 20,000", actor="louis", role="approver", at=day(12))
    assert again == first and order.pending == []


def test_a_decision_stops_being_in_force_when_the_status_changes() -> None:
    order = order_in(S.REFUNDED_NO_REBUY)
    order.decide("pursue", "collect", actor="louis", role="approver", at=NOW)
    order.record_classification(classification(S.REFUNDED_REBOUGHT), day(12))
    assert order.current_decision is not None and order.decision_in_force is None
    with pytest.raises(InvalidTransition):
        order.decide("close", "re-bought", actor="louis", role="approver", at=day(12))


# --- imports, classifications, marks -----------------------------------------------------------


ROW = "o1,s-1,c-1,28000,TWD,2025-05-12,paid,2025-05-12,pi_1,,,none,,l-1,"


def imported(row: str = ROW) -> ImportedRow:
    (r,) = parse_export(csv_bytes(row), "a.csv").rows
    return r


def test_an_identical_row_is_not_recorded_again_but_a_changed_row_is() -> None:
    order = KolableOrder("o1")
    assert order.record_import(imported(), import_id=IMPORT_ID, role="importer", at=NOW) is True
    assert order.record_import(imported(), import_id="b" * 64, role="importer", at=day(10)) is False
    changed = imported(ROW.replace("pi_1,,,", "pi_1,,2025-05-14,").replace(",paid,", ",refunded,"))
    assert order.record_import(changed, import_id="c" * 64, role="importer", at=day(11)) is True
    # changed back: the latest export is what the order says now
    assert order.record_import(imported(), import_id="d" * 64, role="importer", at=day(12)) is True
    assert [type(e) for e in order.pending] == [KolableOrderImported] * 3
    assert order.fingerprint == imported().fingerprint and order.import_id == "d" * 64


def test_only_the_importer_imports_and_rows_must_be_for_this_order() -> None:
    with pytest.raises(PermissionDenied) as caught:
        KolableOrder("o1").record_import(imported(), import_id=IMPORT_ID, role="approver", at=NOW)
    assert "only the importer role may import" in caught.value.rule
    with pytest.raises(RuleViolation) as wrong:
        KolableOrder("o2").record_import(imported(), import_id=IMPORT_ID, role="importer", at=NOW)
    assert wrong.value.field == "order_id"


def test_a_classification_is_recorded_only_when_it_changes() -> None:
    order = KolableOrder("o1")
    assert order.record_classification(classification(S.REFUNDED_NO_REBUY), T0) is True
    assert order.record_classification(classification(S.REFUNDED_NO_REBUY), day(1)) is False
    assert order.record_classification(classification(S.REFUNDED_REBOUGHT), day(2)) is True
    events = [e for e in order.pending if isinstance(e, KolableOrderClassified)]
    assert [(e.previous_status, e.classification.status) for e in events] == [
        (None, S.REFUNDED_NO_REBUY), (S.REFUNDED_NO_REBUY, S.REFUNDED_REBOUGHT)]
    with pytest.raises(RuleViolation):
        order.record_classification(classification(S.PAID_VALID, order_id="o3"), day(3))


def test_the_reconciler_marks_results() -> None:
    order = order_in(S.REFUNDED_NO_REBUY)
    order.mark("refund reason: curriculum upgrade not accepted", actor="huber", role="reconciler", at=NOW)
    assert order.marks[0].status_at_mark is S.REFUNDED_NO_REBUY
    with pytest.raises(PermissionDenied):
        order.mark("x", actor="louis", role="approver", at=NOW)
    with pytest.raises(RuleViolation):
        order.mark(" ", actor="huber", role="reconciler", at=NOW)


def test_the_aggregate_is_rebuilt_from_its_stored_events() -> None:
    order = KolableOrder("o1")
    order.record_import(imported(), import_id=IMPORT_ID, role="importer", at=NOW)
    order.record_classification(classification(S.REFUNDED_NO_REBUY), NOW)
    order.mark("reason noted", actor="huber", role="reconciler", at=NOW)
    order.decide("close", "goodwill", actor="louis", role="approver", at=NOW)
    order.decide("pursue", "changed", actor="louis", role="approver", at=day(10))
    rebuilt = KolableOrder.rehydrate("o1", round_trip(order.pending))
    assert rebuilt.version == 5 and rebuilt.stream_id == "kolable-o1"
    for name in ("row", "fingerprint", "import_id", "line", "classification", "marks", "decisions"):
        assert getattr(rebuilt, name) == getattr(order, name), name
    with pytest.raises(TypeError):
        rebuilt.apply(registry.get("KolableImportCompleted").model_validate(
            {"import_id": IMPORT_ID, "rows": 0, "accepted": 0, "unchanged": 0, "rejected": 0, "actor": "w",
             "at": NOW.isoformat()}))


# --- event conventions -------------------------------------------------------------------------


KOLABLE_EVENTS = [c for _, c in inspect.getmembers(kev, inspect.isclass)
                  if issubclass(c, DomainEvent) and c.__module__ == kev.__name__ and "abstract" not in c.__dict__]


def test_the_events_of_the_reconciliation() -> None:
    assert {c.__name__ for c in KOLABLE_EVENTS} == {
        "KolableOrderImported", "KolableImportCompleted", "KolableOrderClassified", "KolableRefundDecided",
        "KolableReconciliationMarked"}


@pytest.mark.parametrize("cls", KOLABLE_EVENTS, ids=lambda c: c.__name__)
def test_event_conventions(cls: type[DomainEvent]) -> None:
    assert cls.event_type == cls.__name__ and cls.event_type.startswith("Kolable")
    assert cls.topic == "payments.events" and cls.schema_version == 1
    assert registry.get(cls.event_type) is cls
    assert cls.model_config.get("frozen") is True and cls.model_config.get("extra") == "forbid"
    cls.model_json_schema()


def test_import_completed_counts_must_add_up() -> None:
    with pytest.raises(ValidationError):
        kev.KolableImportCompleted(import_id=IMPORT_ID, rows=3, accepted=1, unchanged=1, rejected=0, actor="w",
                                   at=NOW)


def test_a_classification_must_be_internally_consistent() -> None:
    good = classification(S.REFUNDED_NO_REBUY).model_dump()
    for change in ({"cash_gap": {"amount": 1, "currency": "TWD"}},
                   {"recovered": {"amount": 2800001, "currency": "TWD"}},
                   {"missing_fields": ("student_id",)},
                   {"paid": {"amount": 1, "currency": "USD"}}):
        with pytest.raises(ValidationError):
            KolableClassification.model_validate({**good, **change})
