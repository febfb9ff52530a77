"""The RMA state machine (seed 001, case 1): every allowed transition, and every refused
(state, command) pair is an InvalidTransition naming the state, the stage and the allowed commands."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest

from libs.domain.errors import InvalidTransition, RuleViolation
from services.rma.domain.events import RepeatKind, RmaStatus
from services.rma.domain.repeat import PriorRma, RepeatFinding
from services.rma.domain.rma import RMA_TRANSITIONS, Rma, Stage
from tests.unit.rma import ELIGIBLE, LATER, NOW, OLD, plan, rma_in

# The specification, written out here rather than read from the module under test.
EXPECTED_ALLOWED: dict[str, list[str]] = {
    "RECEIVED/awaiting_check": ["check_warranty", "flag_repeat_failure"],
    "RECEIVED/awaiting_review": ["cancel", "review"],
    "ELIGIBLE": ["cancel", "receive_parcel"],
    "SHIPPED_IN": ["start_processing"],
    "PROCESSING/planning": ["choose_replacement"],
    "PROCESSING/chosen": ["mark_ready", "request_transfer"],
    "PROCESSING/awaiting_approval": ["approve_substitution", "refuse_substitution"],
    "PROCESSING/awaiting_transfer": ["resolve_transfer"],
    "PROCESSING/ready": ["ship_out"],
    "PROCESSING/unavailable": ["retry_replacement"],
    "SHIPPED_OUT": ["close"],
    "CLOSED": [],
    "REJECTED": [],
    "CANCELLED": [],
}

# Where each allowed command leads, from each state (the seed's arrows and the two ends).
EXPECTED_TARGET: dict[tuple[str, str], str] = {
    ("RECEIVED/awaiting_check", "check_warranty"): "ELIGIBLE",
    ("RECEIVED/awaiting_check", "flag_repeat_failure"): "RECEIVED/awaiting_check",
    ("RECEIVED/awaiting_review", "review"): "ELIGIBLE",
    ("RECEIVED/awaiting_review", "cancel"): "CANCELLED",
    ("ELIGIBLE", "receive_parcel"): "SHIPPED_IN",
    ("ELIGIBLE", "cancel"): "CANCELLED",
    ("SHIPPED_IN", "start_processing"): "PROCESSING/planning",
    ("PROCESSING/planning", "choose_replacement"): "PROCESSING/chosen",
    ("PROCESSING/chosen", "mark_ready"): "PROCESSING/ready",
    ("PROCESSING/chosen", "request_transfer"): "PROCESSING/awaiting_transfer",
    ("PROCESSING/awaiting_approval", "approve_substitution"): "PROCESSING/planning",
    ("PROCESSING/awaiting_approval", "refuse_substitution"): "PROCESSING/planning",
    ("PROCESSING/awaiting_transfer", "resolve_transfer"): "PROCESSING/chosen",
    ("PROCESSING/ready", "ship_out"): "SHIPPED_OUT",
    ("PROCESSING/unavailable", "retry_replacement"): "PROCESSING/chosen",
    ("SHIPPED_OUT", "close"): "CLOSED",
}

FINDING = RepeatFinding(kind=RepeatKind.SAME_SERIAL, earlier=[], days_since_previous=365, previous=PriorRma(
    rma_id="rma-0", serial="SN-1", sku=OLD, fault_code="left_button.no_response", status=RmaStatus.CLOSED,
    opened_at=NOW))

# One valid call per command, so that only the state decides whether it is allowed.
COMMANDS: dict[str, Callable[[Rma], object]] = {
    "check_warranty": lambda r: r.check_warranty(ELIGIBLE, LATER),
    "flag_repeat_failure": lambda r: r.flag_repeat_failure(FINDING, LATER),
    "review": lambda r: r.review(decision="eligible", note="invoice seen", reviewer="rec-1",
                                 purchase_date=date(2004, 3, 1), warranty_days=365, checked_on=LATER.date(), at=LATER),
    "cancel": lambda r: r.cancel("no longer needed", LATER),
    "receive_parcel": lambda r: r.receive_parcel("label-9", LATER),
    "start_processing": lambda r: r.start_processing("tech-1", LATER),
    "choose_replacement": lambda r: r.choose(plan("ready"), LATER),
    "retry_replacement": lambda r: r.choose(plan("ready"), LATER, command="retry_replacement"),
    "mark_ready": lambda r: r.mark_ready(LATER),
    "request_transfer": lambda r: r.request_transfer(r.next_transfer_id(), LATER, LATER),
    "approve_substitution": lambda r: r.approve_substitution("worth it", LATER),
    "refuse_substitution": lambda r: r.refuse_substitution(None, "too expensive", LATER),
    "resolve_transfer": lambda r: r.resolve_transfer(r.transfer_id or "t-x", "accepted", "sent", LATER),
    "ship_out": lambda r: r.ship_out(shipment_id="shp-9", carrier="tcat", tracking_number="T9", eta=None, at=LATER),
    "close": lambda r: r.close("replacement_delivered", "shp-1", LATER),
}


def _state(r: Rma) -> str:
    assert r.status is not None
    return r.status.value + (f"/{r.stage.value}" if r.stage else "")


def _built(state: str, command: str) -> Rma:
    # A chosen replacement is either local (mark_ready) or to be transferred (request_transfer).
    return rma_in(state, source="transfer" if command == "request_transfer" else "local")


def test_the_table_is_the_specification() -> None:
    table = {f"{s.value}/{g.value}" if g else s.value: sorted(cmds) for (s, g), cmds in RMA_TRANSITIONS.items()}
    assert table == EXPECTED_ALLOWED
    assert {k.split("/")[0] for k in EXPECTED_ALLOWED} == {s.value for s in RmaStatus}  # every state of the seed


@pytest.mark.parametrize("state", sorted(EXPECTED_ALLOWED))
def test_allowed_commands_of_each_state(state: str) -> None:
    assert rma_in(state).allowed_commands() == EXPECTED_ALLOWED[state]


@pytest.mark.parametrize(("state", "command"), sorted(EXPECTED_TARGET))
def test_every_allowed_transition(state: str, command: str) -> None:
    rma = _built(state, command)
    COMMANDS[command](rma)
    assert rma.pending, "an allowed command records an event"
    assert _state(rma) == EXPECTED_TARGET[(state, command)]
    status, _, stage = state.partition("/")
    key = (RmaStatus(status), Stage(stage) if stage else None)
    assert rma.status in RMA_TRANSITIONS[key][command]  # the table names the target


REFUSED = [(state, command) for state in sorted(EXPECTED_ALLOWED) for command in sorted(COMMANDS)
           if command not in EXPECTED_ALLOWED[state]]


@pytest.mark.parametrize(("state", "command"), REFUSED)
def test_every_other_command_is_refused_naming_the_state_and_the_allowed_commands(state: str, command: str) -> None:
    rma = rma_in(state)
    replay = {"receive_parcel": ("SHIPPED_IN", "PROCESSING", "SHIPPED_OUT", "CLOSED"),
              "close": ("CLOSED",)}
    if command in replay and any(state.startswith(s) for s in replay[command]):
        # A fact already recorded (parcel in, closed): repeating it changes nothing instead of failing.
        assert COMMANDS[command](rma) is False and not rma.pending
        return
    with pytest.raises(InvalidTransition) as err:
        COMMANDS[command](rma)
    status = state.split("/")[0]
    assert err.value.details["current_state"] == status
    assert err.value.details["allowed_commands"] == EXPECTED_ALLOWED[state]
    assert err.value.details["command"] == command
    if "/" in state:
        assert err.value.details["stage"] == state.split("/")[1]
    assert not rma.pending, "nothing recorded"


def test_a_chosen_replacement_is_reserved_or_transferred_according_to_its_source() -> None:
    with pytest.raises(InvalidTransition):
        rma_in("PROCESSING/chosen", source="local").request_transfer("t-1", LATER, LATER)
    with pytest.raises(InvalidTransition):
        rma_in("PROCESSING/chosen", source="transfer").mark_ready(LATER)


def test_replaying_a_shipment_already_recorded_changes_nothing() -> None:
    rma = rma_in("SHIPPED_OUT")
    assert rma.ship_out(shipment_id="shp-1", carrier="tcat", tracking_number="T123", eta=None, at=LATER) is False
    assert not rma.pending
    with pytest.raises(InvalidTransition):  # another shipment for the same RMA: refused, visible
        rma.ship_out(shipment_id="shp-2", carrier="tcat", tracking_number="T999", eta=None, at=LATER)


def test_review_refuses_a_purchase_date_in_the_future_and_records_the_reviewer() -> None:
    rma = rma_in("RECEIVED/awaiting_review")
    with pytest.raises(RuleViolation) as err:
        rma.review(decision="eligible", note="n", reviewer="rec-1", purchase_date=date(2005, 1, 1), warranty_days=365,
                   checked_on=NOW.date(), at=NOW)
    assert err.value.field == "purchase_date"
    rma.review(decision="rejected", note="the invoice is for another serial", reviewer="rec-1", purchase_date=None,
               warranty_days=365, checked_on=NOW.date(), at=NOW)
    assert rma.status is RmaStatus.REJECTED
    assert rma.basis is not None and rma.basis.source == "manual_review" and rma.basis.reviewer == "rec-1"
    assert rma.basis.reference == "the invoice is for another serial"


def test_the_approvers_alternative_must_differ_from_the_refused_substitute() -> None:
    rma = rma_in("PROCESSING/awaiting_approval")
    assert rma.decision is not None
    with pytest.raises(RuleViolation):
        rma.refuse_substitution(rma.decision.sku, "no", LATER)


def test_the_replacement_ready_event_carries_the_assigned_serial_and_the_original_sku() -> None:
    rma = rma_in("PROCESSING/chosen")
    ready = rma.mark_ready(LATER)
    assert ready.replacement_serial == "RPL-rma-1" and ready.original_sku == OLD and ready.same_sku is False
    assert ready.warehouse_id == rma.warehouse_id and ready.contact == rma.contact
