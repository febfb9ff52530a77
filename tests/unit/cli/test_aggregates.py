"""The category registry of the replay CLI knows every aggregate of every service, and a replay
with it rebuilds what the aggregate's own rehydrate gives."""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from datetime import UTC, datetime, timedelta

import services
from libs.cli.aggregates import AGGREGATES, EVENTS_ONLY, EVENTS_ONLY_CLASSES, aggregate_for, describe
from libs.cli.jsonable import state_of
from libs.cli.replay import events_as_of, replay
from libs.domain.aggregate import Aggregate
from libs.domain.events import DomainEvent
from libs.eventstore import RecordedEvent
from services.orders.domain.order import Order
from services.orders.domain.schedule import StaffSchedule
from services.registry import STREAM_TOPICS
from services.rma.domain.stock import StockLevel, Warehouse
from tests.unit.orders import BILL_TOTAL, FINAL_BILL, MERCHANT, SLOT, SOON, place

T0 = datetime(2025, 3, 10, 1, 0, tzinfo=UTC)


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def _every_aggregate() -> set[type[Aggregate]]:
    for mod in pkgutil.walk_packages(services.__path__, "services."):
        if ".domain" in mod.name or ".application" in mod.name:
            importlib.import_module(mod.name)
    return {c for c in _subclasses(Aggregate) if getattr(c, "category", None) and c.__module__.startswith("services.")}


def test_every_aggregate_of_every_service_is_registered() -> None:
    found = _every_aggregate()
    assert len(found) >= 20, found
    registered = {c for kind in AGGREGATES.values() for c in kind.classes} | set(EVENTS_ONLY_CLASSES)
    missing = sorted(f"{c.__module__}.{c.__qualname__} (category {c.category!r})" for c in found - registered)
    assert not missing, f"unknown to libs/cli/aggregates.py (add to AGGREGATES or EVENTS_ONLY): {missing}"


def test_every_registered_class_sits_under_its_own_category() -> None:
    for category, kind in AGGREGATES.items():
        assert kind.category == category
        assert all(c.category == category for c in kind.classes), kind
    assert all(c.category in EVENTS_ONLY for c in EVENTS_ONLY_CLASSES)
    assert not set(AGGREGATES) & set(EVENTS_ONLY)


def test_every_stream_category_of_the_registry_is_known() -> None:
    unknown = sorted(c for c in STREAM_TOPICS if c not in AGGREGATES and c not in EVENTS_ONLY)
    assert not unknown, f"stream categories of services/registry.py unknown to the replay CLI: {unknown}"


def test_a_stream_id_finds_its_class_and_aggregate_id() -> None:
    assert aggregate_for("order-ord-1") == (Order, "ord-1")
    assert aggregate_for("stock-wh-north") == (Warehouse, "wh-north")
    assert aggregate_for("stock-wh-north/MX-100") == (StockLevel, "wh-north/MX-100")
    assert aggregate_for("schedule-s-1-2025-03-11") == (StaffSchedule, "s-1-2025-03-11")
    assert aggregate_for("payment-ord-1")[0] is None
    assert aggregate_for("nosuch-1")[0] is None
    assert describe("payment-ord-1").startswith("events only: the payments contract events")
    assert "no aggregate is registered" in describe("nosuch-1")


def _recorded(stream_id: str, events: list[DomainEvent], start: datetime = T0) -> list[RecordedEvent]:
    return [RecordedEvent(global_position=10 + i, transaction_id=100 + i, event_id=uuid.uuid4(), stream_id=stream_id,
                          stream_version=i + 1, event_type=e.event_type, schema_version=e.schema_version,
                          data=e.to_data(), metadata={"actor": "c-1", "role": "customer", "correlation_id": "k"},
                          recorded_at=start + timedelta(seconds=i), prev_hash="", hash="")
            for i, e in enumerate(events)]


def _order_events() -> list[DomainEvent]:
    order = place(required=True)
    order.start_checkout("att-1", SOON)
    order.abandon_checkout("att-1", "back from the cashier", SOON)
    return order.pending


def test_a_replay_gives_the_state_after_each_event_as_rehydrate_does() -> None:
    events = _order_events()
    stored = _recorded("order-o-1", events)
    result = replay("order-o-1", stored)
    assert result.aggregate is Order and result.error is None
    assert [s.state["version"] for s in result.steps if s.state] == [1, 2, 3]
    for n, step in enumerate(result.steps, start=1):
        assert step.state == state_of(Order.rehydrate("o-1", events[:n]))
    assert result.steps[0].changed[:2] == ["status", "customer_id"]
    assert result.steps[1].changed == ["status", "checkout_attempt_id"]
    assert result.state is not None and result.state["status"] == "awaiting_prepayment"


def test_as_of_takes_the_leading_events_recorded_at_or_before_the_moment() -> None:
    stored = _recorded("order-o-1", _order_events())
    assert [e.stream_version for e in events_as_of(stored, T0 + timedelta(seconds=1))] == [1, 2]
    assert events_as_of(stored, T0 - timedelta(microseconds=1)) == []
    assert events_as_of(stored, None) == stored
    # A later version with an earlier recorded_at (a clock step back) does not make a hole.
    odd = [*stored[:1], *_recorded("order-o-1", _order_events()[1:2], T0 + timedelta(hours=1)), stored[2]]
    assert [e.stream_version for e in events_as_of(odd, T0 + timedelta(minutes=1))] == [1]


def test_an_event_that_cannot_be_decoded_stops_the_state_and_says_why() -> None:
    stored = _recorded("order-o-1", _order_events())
    bad = RecordedEvent(**{**{f: getattr(stored[1], f) for f in RecordedEvent.__slots__},  # type: ignore[arg-type]
                           "event_type": "NoSuchEvent"})
    result = replay("order-o-1", [stored[0], bad, stored[2]])
    assert result.steps[0].state is not None
    assert result.steps[1].state is None and "cannot decode" in (result.steps[1].error or "")
    assert result.steps[2].state is None and "earlier event" in (result.steps[2].error or "")


def test_events_only_streams_and_bad_ids_show_events_without_state() -> None:
    stored = _recorded("payment-o-1", _order_events()[:1])
    result = replay("payment-o-1", stored)
    assert result.aggregate is None and [s.state for s in result.steps] == [None]
    broken = replay("schedule-not-a-day", _recorded("schedule-not-a-day", _order_events()[:1]))
    assert broken.error is not None and "could not be created" in broken.error


def test_the_bill_flow_replays_too() -> None:
    order = place(required=False)
    order.mark_saved()
    order.accept(MERCHANT, SOON)
    order.start_service(MERCHANT, SLOT.start)
    order.push_bill(MERCHANT, FINAL_BILL, BILL_TOTAL, SLOT.end)
    events = [*place(required=False).pending, *order.pending]
    result = replay("order-o-1", _recorded("order-o-1", events))
    assert result.state is not None and result.state["status"] == "billed"
    assert result.state["bill_total"] == {"amount": BILL_TOTAL.amount, "currency": "TWD"}
