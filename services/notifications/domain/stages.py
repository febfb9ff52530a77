"""The stage map: which event tells whom about which stage, with which template.

The customer gets **one message per stage and channel**. Several events describe the same stage
(`RmaEligible` and `ReturnLabelIssued`; `InboundParcelScanned` and `RmaShippedIn`; `ShipmentCreated`
and `RmaShippedOut` of the same shipment): exactly one of them notifies, the others only move the SLA
clocks or record what later messages need (contact, tracking number, carrier ETA). On top of that, the
stage key (audience, subject, stage, channel) is unique in the outbox, so even two events that both
notify for a stage (`ShipmentStatusChanged` Delivered and `RmaClosed`: "completed") give one message:
the first to arrive. Delivery exceptions are the one stage that notifies per occurrence.

| event                                   | stage              | customer template          |
|-----------------------------------------|--------------------|----------------------------|
| RmaOpened                               | received           | rma_opened                 |
| RmaEligible                             | label_issued       | — (the label message follows with the label) |
| ReturnLabelIssued                       | label_issued       | return_label_issued        |
| InboundParcelScanned                    | shipped_in         | — (RmaShippedIn notifies)  |
| RmaShippedIn                            | shipped_in         | rma_shipped_in             |
| RmaReplacementReady                     | processing         | — (internal step)          |
| ShipmentCreated                         | shipped_out        | — (RmaShippedOut notifies) |
| RmaShippedOut                           | shipped_out        | rma_shipped_out            |
| ShipmentStatusChanged InTransit         | in_transit         | —                          |
| ShipmentStatusChanged OutForDelivery    | out_for_delivery   | shipment_out_for_delivery  |
| ShipmentStatusChanged Delivered         | completed          | shipment_delivered         |
| RmaClosed                               | completed          | rma_closed (only if Delivered did not notify first) |
| ShipmentStatusChanged Exception         | delivery_exception | shipment_exception (each occurrence) |
| ShipmentStatusChanged ReturnedToSender  | delivery_exception | shipment_exception (each occurrence) |
| RmaRejected                             | rejected           | rma_rejected               |
| RmaCancelled                            | cancelled          | rma_cancelled              |
| SlaBreachWarning                        | sla_breach         | operations: sla_breach_warning (each occurrence) |

Channels: a customer gets e-mail when the RMA's contact has an address, SMS when it has a phone
number, and always the in-app inbox (recipient = the customer id); operations get e-mail (the
configured address) and the in-app inbox `operations`. Shipments that belong to no RMA (orders)
notify nobody here.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.notifications.domain.events import Audience, Channel


@dataclass(frozen=True)
class StageRule:
    stage: str
    template: str | None  # None: this event does not notify (another event of the stage does)
    audience: Audience = "customer"
    per_occurrence: bool = False  # True: every such event notifies (its stage key names the event)
    why_silent: str = ""


STAGE_MAP: dict[tuple[str, str | None], StageRule] = {
    ("RmaOpened", None): StageRule("received", "rma_opened"),
    ("RmaEligible", None): StageRule("label_issued", None, why_silent="ReturnLabelIssued notifies, with the label"),
    ("ReturnLabelIssued", None): StageRule("label_issued", "return_label_issued"),
    ("InboundParcelScanned", None): StageRule("shipped_in", None, why_silent="RmaShippedIn notifies"),
    ("RmaShippedIn", None): StageRule("shipped_in", "rma_shipped_in"),
    ("RmaReplacementReady", None): StageRule("processing", None, why_silent="an internal step"),
    ("ShipmentCreated", None): StageRule("shipped_out", None, why_silent="RmaShippedOut of the shipment notifies"),
    ("RmaShippedOut", None): StageRule("shipped_out", "rma_shipped_out"),
    ("ShipmentStatusChanged", "InTransit"): StageRule("in_transit", None, why_silent="no news for the customer"),
    ("ShipmentStatusChanged", "OutForDelivery"): StageRule("out_for_delivery", "shipment_out_for_delivery"),
    ("ShipmentStatusChanged", "Delivered"): StageRule("completed", "shipment_delivered"),
    ("ShipmentStatusChanged", "Exception"): StageRule("delivery_exception", "shipment_exception",
                                                      per_occurrence=True),
    ("ShipmentStatusChanged", "ReturnedToSender"): StageRule("delivery_exception", "shipment_exception",
                                                             per_occurrence=True),
    ("RmaClosed", None): StageRule("completed", "rma_closed"),
    ("RmaRejected", None): StageRule("rejected", "rma_rejected"),
    ("RmaCancelled", None): StageRule("cancelled", "rma_cancelled"),
    ("SlaBreachWarning", None): StageRule("sla_breach", "sla_breach_warning", audience="operations",
                                          per_occurrence=True),
}

CUSTOMER_CHANNELS: tuple[Channel, ...] = ("email", "sms", "in_app")
OPERATIONS_CHANNELS: tuple[Channel, ...] = ("email", "in_app")
OPERATIONS = "operations"


def rule_for(event_type: str, status: str | None = None) -> StageRule | None:
    """The stage rule of an event (for ShipmentStatusChanged, of its status); None: not a stage."""
    return STAGE_MAP.get((event_type, status))


def templates() -> list[str]:
    """Every template the stage map uses."""
    return sorted({r.template for r in STAGE_MAP.values() if r.template})


def stage_key(rule: StageRule, subject_id: str, channel: str, source_id: str) -> str:
    """Unique in the outbox: one message per (audience, subject, stage, channel), or per occurrence."""
    key = f"{rule.audience}:{subject_id}:{rule.stage}:{channel}"
    return f"{key}:{source_id}" if rule.per_occurrence else key
