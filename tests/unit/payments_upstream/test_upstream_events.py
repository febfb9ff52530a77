"""Conventions of the upstream and dispute events, deterministic ids, and the received-event record."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from libs.domain.events import DomainEvent, registry
from services.payments.domain import dispute as dispute_module
from services.payments.domain import upstream_events as ue
from services.payments.domain.upstream import UPSTREAM_NAMESPACE, event_uuid, parse_event, received_event
from tests.unit.payments_upstream import CHARGE, CREATED, ORDER, at, charge, event, round_trip, twd


def concrete_events(module: Any) -> list[type[DomainEvent]]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, DomainEvent) and c.__module__ == module.__name__ and "abstract" not in c.__dict__]


UPSTREAM = concrete_events(ue)
DISPUTES = concrete_events(dispute_module)


def test_the_modules_define_the_expected_events() -> None:
    assert {c.__name__ for c in UPSTREAM} == {
        "UpstreamEventReceived", "UpstreamChargeSucceeded", "UpstreamPaymentFailed", "UpstreamChargeRefunded",
        "UpstreamRefundUpdated", "UpstreamDisputeOpened", "UpstreamDisputeUpdated", "UpstreamDisputeClosed"}
    assert {c.__name__ for c in DISPUTES} == {"DisputeOpened", "DisputeStateChanged", "DisputeClosed",
                                             "DisputeOrderLinked"}


@pytest.mark.parametrize("cls", UPSTREAM + DISPUTES, ids=lambda c: c.__name__)
def test_event_conventions(cls: type[DomainEvent]) -> None:
    assert cls.event_type == cls.__name__
    assert cls.schema_version == 1
    assert registry.get(cls.event_type) is cls
    assert cls.topic == "payments.events"
    assert cls.model_config.get("frozen") is True and cls.model_config.get("extra") == "forbid"
    cls.model_json_schema()  # `make schemas` must be able to render every event


def test_upstream_event_names_are_prefixed() -> None:
    assert all(c.__name__.startswith("Upstream") for c in UPSTREAM)


def test_event_uuid_is_uuid5_over_provider_and_event_id() -> None:
    first = event_uuid("stripe", "evt_1TestEventAbCdEf01234567")
    assert first == event_uuid("stripe", "evt_1TestEventAbCdEf01234567")  # a redelivery gets the same id
    assert first == uuid.uuid5(UPSTREAM_NAMESPACE, "stripe:evt_1TestEventAbCdEf01234567")
    assert first.version == 5
    assert first != event_uuid("stripe", "evt_1TestEventAbCdEf01234568")
    assert first != event_uuid("stripe", "evt_1TestEventAbCdEf01234567", "fact")
    assert event_uuid("stripe", "evt_x", "fact") != event_uuid("stripe", "evt_x", "dispute")
    # Fixed forever: a new namespace would give stored events new ids and break deduplication.
    assert str(UPSTREAM_NAMESPACE) == str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                     "https://closeloop.invalid/payments/upstream-events"))
    with pytest.raises(ValueError):
        event_uuid("stripe", "")


def test_the_received_event_keeps_the_raw_payload_and_how_it_came() -> None:
    body = event("charge.succeeded", charge())
    stored = received_event(parse_event(body), via="webhook", signature_verified=True,
                            received_at=at(CREATED + 2))
    assert stored.provider == "stripe" and stored.provider_event_id == body["id"]
    assert stored.type == "charge.succeeded" and stored.known and stored.api_version == "2024-06-20"
    assert stored.created == at(CREATED) and stored.livemode is False
    assert stored.received_via is ue.ReceivedVia.WEBHOOK and stored.signature_verified
    assert stored.payload == body
    assert round_trip([stored]) == [stored]
    with pytest.raises(ValueError):
        received_event(parse_event(body), via="email", signature_verified=False, received_at=at(CREATED))


def test_a_fact_without_money_or_order_needs_a_data_gap() -> None:
    common: dict[str, Any] = {"provider_event_id": "evt_1", "upstream_type": "charge.succeeded",
                              "occurred_at": at(CREATED), "source": "charge", "charge_id": CHARGE,
                              "provider_amount": ue.ProviderAmount(amount=1, currency="xyz")}
    with pytest.raises(ValidationError, match="data_gap"):
        ue.UpstreamChargeSucceeded(order_ref=ue.OrderRef(charge_id=CHARGE), amount=None, **common)
    with pytest.raises(ValidationError, match="data_gap"):
        ue.UpstreamChargeSucceeded(order_ref=ue.OrderRef(), amount=twd(1), **common)
    ok = ue.UpstreamChargeSucceeded(order_ref=ue.OrderRef(order_id=ORDER), amount=None, data_gap="currency", **common)
    assert ok.amount is None


def test_a_closed_dispute_fact_needs_an_outcome_or_a_gap() -> None:
    with pytest.raises(ValidationError, match="outcome"):
        ue.UpstreamDisputeClosed(
            provider_event_id="evt_1", upstream_type="charge.dispute.closed", occurred_at=at(CREATED),
            order_ref=ue.OrderRef(charge_id=CHARGE), dispute_id="dp_1", amount=twd(1),
            provider_amount=ue.ProviderAmount(amount=1, currency="twd"), status="prevented", reason="general",
            dispute_created_at=at(CREATED))


def test_naive_datetimes_and_unknown_fields_are_refused() -> None:
    body = event("charge.succeeded", charge())
    with pytest.raises(ValidationError):
        received_event(parse_event(body), via="csv", signature_verified=False, received_at=at(CREATED).replace(
            tzinfo=None))
    data = received_event(parse_event(body), via="csv", signature_verified=False, received_at=at(CREATED)).to_data()
    with pytest.raises(ValidationError):
        ue.UpstreamEventReceived.model_validate({**data, "note": "x"})
