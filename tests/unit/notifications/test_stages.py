"""The stage map: the customer gets one message per stage; every contract event the service reads has
its place in the map."""

from __future__ import annotations

from collections import defaultdict

from libs.domain.events import DomainEvent
from services.notifications.domain.stages import STAGE_MAP, rule_for, stage_key
from services.rma.domain import events as rma
from services.shipping.domain import events as ship

# What rma and shipping publish for notifications (docs/after-sales.md, "The contract").
CONTRACT: list[type[DomainEvent]] = [rma.RmaOpened, rma.RmaEligible, rma.RmaShippedIn, rma.RmaReplacementReady,
                                     rma.RmaShippedOut,
                                     rma.RmaClosed, rma.RmaRejected, rma.RmaCancelled, ship.ReturnLabelIssued,
                                     ship.InboundParcelScanned, ship.ShipmentCreated, ship.ShipmentStatusChanged]
# Stages several events may notify for: the first one wins (the stage key is unique in the outbox).
FIRST_WINS = {"completed": {"shipment_delivered", "rma_closed"}}


def test_each_customer_stage_is_notified_by_one_event_unless_its_stage_key_keeps_it_to_one() -> None:
    notifying: dict[str, set[str]] = defaultdict(set)
    for rule in STAGE_MAP.values():
        if rule.template and rule.audience == "customer":
            notifying[rule.stage].add(rule.template)
    for stage, templates in notifying.items():
        assert len(templates) == 1 or FIRST_WINS.get(stage) == templates, f"{stage}: {templates}"


def test_the_pairs_of_the_same_stage_notify_once() -> None:
    assert rule_for("RmaShippedOut") == rule_for("RmaShippedOut")
    shipped_out, created = rule_for("RmaShippedOut"), rule_for("ShipmentCreated")
    assert shipped_out and created and shipped_out.stage == created.stage == "shipped_out"
    assert shipped_out.template == "rma_shipped_out" and created.template is None
    label, eligible = rule_for("ReturnLabelIssued"), rule_for("RmaEligible")
    assert label and eligible and label.stage == eligible.stage and eligible.template is None
    shipped_in, scanned = rule_for("RmaShippedIn"), rule_for("InboundParcelScanned")
    assert shipped_in and scanned and shipped_in.stage == scanned.stage and scanned.template is None
    for silent in (eligible, created, scanned):
        assert silent.why_silent


def test_every_rma_and_shipping_contract_event_is_in_the_map() -> None:
    for cls in CONTRACT:
        if cls is ship.ShipmentStatusChanged:
            for status in ship.TrackingStatus:
                assert rule_for(cls.event_type, status.value) is not None, status
        else:
            assert rule_for(cls.event_type) is not None, cls.event_type
    assert rule_for("ShipmentStatusChanged") is None  # a status change is mapped by its status


def test_shipment_status_stages() -> None:
    assert rule_for("ShipmentStatusChanged", "InTransit").template is None  # type: ignore[union-attr]
    assert rule_for("ShipmentStatusChanged", "OutForDelivery").template == "shipment_out_for_delivery"  # type: ignore[union-attr]
    assert rule_for("ShipmentStatusChanged", "Delivered").stage == "completed"  # type: ignore[union-attr]
    exc = rule_for("ShipmentStatusChanged", "Exception")
    assert exc and exc.per_occurrence


def test_stage_key_is_per_stage_and_channel_or_per_occurrence() -> None:
    opened = rule_for("RmaOpened")
    assert opened is not None
    assert stage_key(opened, "rma-1", "email", "ev-1") == "customer:rma-1:received:email"
    assert stage_key(opened, "rma-1", "email", "ev-2") == stage_key(opened, "rma-1", "email", "ev-1")
    assert stage_key(opened, "rma-1", "sms", "ev-1") != stage_key(opened, "rma-1", "email", "ev-1")
    delivered, closed = rule_for("ShipmentStatusChanged", "Delivered"), rule_for("RmaClosed")
    assert delivered and closed
    assert stage_key(delivered, "rma-1", "sms", "ev-3") == stage_key(closed, "rma-1", "sms", "ev-4")
    exc = rule_for("ShipmentStatusChanged", "Exception")
    assert exc is not None
    assert stage_key(exc, "rma-1", "sms", "ev-5") != stage_key(exc, "rma-1", "sms", "ev-6")
    breach = rule_for("SlaBreachWarning")
    assert breach and breach.audience == "operations"
    assert stage_key(breach, "rma-1", "email", "sla:x").startswith("operations:rma-1:sla_breach:email:")
