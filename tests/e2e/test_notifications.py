"""The notifications service through the running stack (docs/after-sales.md, seed 001 cases 1 and 6):
rma's and shipping's contract events are published to Kafka here, with the relay's envelope, the way
those services' relays do; the default sender's sink (table notifications_sink) is what the customer
"received".

- every stage of the warranty replacement gives exactly one message per channel, even when each event
  is delivered twice and the whole story is delivered again; ShipmentCreated and RmaShippedOut of one
  shipment, Delivered and RmaClosed, give one message each stage;
- a failing sender is retried with exponential backoff and the message arrives once; a permanent
  failure is given up at once;
- a stage that runs past its SLA gives one SlaBreachWarning and a message to operations; the ETA;
- bad query input is refused naming the field.

The last tests wire the service in-process on the same PostgreSQL (bootstrap.wire, no Kafka or HTTP):
the outbox's dedupe key without the consumer's inbox, give-up after N attempts, the JSONL sink.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from faststream.kafka import KafkaBroker

from libs.domain.events import DomainEvent
from libs.eventstore import EventStore
from libs.eventstore.migrate import migrate
from libs.messaging import envelope
from services.notifications.adapters.senders import read_sink_files
from services.notifications.bootstrap import MIGRATIONS, NotificationsSettings, wire
from services.notifications.domain.notification import dedupe_key, notification_id
from services.rma.domain import events as rma
from services.shipping.domain import events as ship

pytestmark = pytest.mark.e2e
QA = {"X-Actor": "qa", "X-Role": "service"}  # the test-only fault injection is staff's
T = TypeVar("T")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now() -> datetime:
    return datetime.now(UTC)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30) -> T:
    """Poll `probe` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} within {timeout} s; last seen: {last!r}")


def stream_of(event: DomainEvent) -> str:
    if isinstance(event, ship.ReturnLabelIssued | ship.InboundParcelScanned):
        return f"label-{event.label_id}"
    if isinstance(event, ship.ShipmentCreated | ship.ShipmentStatusChanged):
        return f"shipment-{event.shipment_id}"
    return f"rma-{event.rma_id}"  # type: ignore[attr-defined]


class AfterSalesFeed:
    """Publishes rma and shipping contract events to their topics as their relays would (the envelope,
    keyed by stream), and can deliver the same message again (same event id)."""

    def __init__(self, bootstrap: str, pg_dsn: str, consumer: str) -> None:
        self.broker = KafkaBroker(bootstrap, acks="all", enable_idempotence=False, client_id="closeloop-aftersales")
        self.pg_dsn, self.consumer = pg_dsn, consumer
        self.versions: dict[str, int] = defaultdict(int)
        self.sent: list[tuple[str, bytes, bytes, dict[str, str], str]] = []  # (topic, key, value, headers, id)

    async def publish(self, event: DomainEvent) -> tuple[str, int, int, str]:
        stream_id = stream_of(event)
        self.versions[stream_id] += 1
        event_id = uuid.uuid4()
        key, value, headers = envelope.encode_external(
            event, stream_id=stream_id, stream_version=self.versions[stream_id], event_id=event_id,
            metadata={"actor": "after-sales-feed", "role": "service", "correlation_id": stream_id,
                      "causation_id": None})
        self.sent.append((event.topic, key, value, headers, str(event_id)))
        return await self._send(event.topic, key, value, headers) + (str(event_id),)

    async def redeliver(self, index: int) -> tuple[str, int, int]:
        topic, key, value, headers, _ = self.sent[index]
        return await self._send(topic, key, value, headers)

    async def _send(self, topic: str, key: bytes, value: bytes, headers: dict[str, str]) -> tuple[str, int, int]:
        meta = await self.broker.publish(value, topic=topic, key=key, headers=headers,
                                         correlation_id=headers[envelope.H_CORRELATION])
        return meta.topic, meta.partition, meta.offset

    async def consumed(self, where: tuple[Any, ...], timeout: float = 30) -> None:
        """Wait until the notifications consumer committed past that message (its effects with it)."""
        topic, partition, offset = where[:3]

        async def probe() -> bool:
            conn = await asyncpg.connect(self.pg_dsn)
            try:
                nxt = await conn.fetchval("SELECT next_offset FROM consumer_offsets WHERE consumer = $1 AND topic = $2"
                                          " AND partition = $3", self.consumer, topic, partition)
            finally:
                await conn.close()
            return nxt is not None and nxt > offset

        await eventually(probe, f"{self.consumer} to consume {topic}/{partition}@{offset}", timeout)


@pytest.fixture(scope="module")
async def feed(stack: Any) -> AsyncIterator[AfterSalesFeed]:
    f = AfterSalesFeed(stack.kafka_bootstrap, stack.pg_dsn, f"{stack.prefix}notifications")
    await f.broker.start()
    try:
        yield f
    finally:
        await f.broker.stop()


@pytest.fixture
async def http(stack: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url("notifications"), timeout=10, auth=stack.auth) as c:
        yield c


async def sink_rows(pg_dsn: str, subject_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT s.*, n.stage, n.audience FROM notifications_sink s"
                                " JOIN notifications n USING (notification_id) WHERE s.subject_id = $1"
                                " ORDER BY s.first_sent_at", subject_id)
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def stream_types(pg_dsn: str, stream_id: str) -> list[str]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version", stream_id)]
    finally:
        await conn.close()


def mouse_story(rma_id: str, customer: str, *, locale: str = "zh-TW", opened_at: datetime | None = None,
                email: bool = True, phone: bool = True) -> list[DomainEvent]:
    """The warranty replacement of seed 001's mouse, as rma and shipping tell it."""
    t0 = opened_at or now()
    contact = rma.Contact(customer_id=customer, email=f"{customer}@example.com" if email else None,
                          phone="+886912345678" if phone else None, locale=locale)  # type: ignore[arg-type]
    address = rma.ShippingAddress(name="王小明", line1="信義路五段7號", city="台北市")
    basis = rma.WarrantyBasis(source="sales_record", reference="INV-1", checked_on=t0.date())
    label, shipment = uid("lbl"), uid("shp")
    tracking_in, tracking_out = f"RT{uuid.uuid4().hex[:10].upper()}", f"TC{uuid.uuid4().hex[:10].upper()}"

    def later(minutes: float) -> datetime:
        return t0 + timedelta(minutes=minutes)

    def status(s: ship.TrackingStatus, minutes: float, **extra: Any) -> ship.ShipmentStatusChanged:
        return ship.ShipmentStatusChanged(shipment_id=shipment, rma_id=rma_id, tracking_number=tracking_out,
                                          status=s, carrier_status=s.value, location="台北", occurred_at=later(minutes),
                                          at=later(minutes), **extra)

    return [
        rma.RmaOpened(rma_id=rma_id, serial="SN-2003-0001", sku="MS-WL-OPT-01", fault_code="btn_l_dbl",
                      contact=contact, ship_to=address, at=t0),
        rma.RmaEligible(rma_id=rma_id, serial="SN-2003-0001", sku="MS-WL-OPT-01", basis=basis, contact=contact,
                        ship_to=address, at=later(1)),
        ship.ReturnLabelIssued(label_id=label, rma_id=rma_id, carrier="tcat", tracking_number=tracking_in,
                               barcode_payload=f"RMA-{rma_id}", qr_payload=f"closeloop://labels/{label}",
                               contact=contact, at=later(2)),
        ship.InboundParcelScanned(label_id=label, rma_id=rma_id, scanned_at=later(60), at=later(60)),
        rma.RmaShippedIn(rma_id=rma_id, label_id=label, at=later(61)),
        ship.ShipmentCreated(shipment_id=shipment, rma_id=rma_id, action="ship_replacement", sku="MS-WL-OPT-02",
                             warehouse_id="wh-north", carrier="tcat", tracking_number=tracking_out, ship_to=address,
                             contact=contact, eta=later(3000), at=later(120)),
        rma.RmaShippedOut(rma_id=rma_id, shipment_id=shipment, carrier="tcat", tracking_number=tracking_out,
                          eta=later(3000), at=later(121)),
        status(ship.TrackingStatus.IN_TRANSIT, 600),
        status(ship.TrackingStatus.OUT_FOR_DELIVERY, 2900, eta=later(2990)),
        status(ship.TrackingStatus.DELIVERED, 2950),
        rma.RmaClosed(rma_id=rma_id, resolution="replaced", at=later(2951)),
    ]


CUSTOMER_STAGES = {"received": "rma_opened", "label_issued": "return_label_issued", "shipped_in": "rma_shipped_in",
                   "shipped_out": "rma_shipped_out", "out_for_delivery": "shipment_out_for_delivery",
                   "completed": "shipment_delivered"}


async def test_each_stage_gives_one_message_per_channel_even_when_every_event_is_redelivered(
        stack: Any, feed: AfterSalesFeed, http: httpx.AsyncClient) -> None:
    rma_id, customer = uid("rma"), uid("cust")
    story = mouse_story(rma_id, customer, locale="en")
    start = len(feed.sent)
    for event in story:
        where = await feed.publish(event)
        await feed.redeliver(len(feed.sent) - 1)  # every event twice: a redelivery right behind it
        await feed.consumed(where)
    # ... and the whole story once more, as after a consumer-group rebalance
    last = None
    for i in range(start, len(feed.sent)):
        last = await feed.redeliver(i)
    assert last is not None
    await feed.consumed(last)
    await asyncio.sleep(0.5)  # nothing else is on its way, but give a stray duplicate the chance to show
    rows = await eventually(lambda: _all_sent(stack.pg_dsn, rma_id, 18), "18 messages in the sink")
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_stage[r["stage"]].append(r)
    assert set(by_stage) == set(CUSTOMER_STAGES), sorted(by_stage)
    for stage, template in CUSTOMER_STAGES.items():
        assert sorted(r["channel"] for r in by_stage[stage]) == ["email", "in_app", "sms"], stage
        assert {r["template"] for r in by_stage[stage]} == {template}
    assert all(r["deliveries"] == 1 and r["locale"] == "en" and r["recipient"] == customer for r in rows)
    addresses = {r["channel"]: r["address"] for r in rows}
    assert addresses == {"email": f"{customer}@example.com", "sms": "+886912345678", "in_app": customer}

    shipped = next(r for r in by_stage["shipped_out"] if r["channel"] == "email")
    tracking = story[6].tracking_number  # type: ignore[attr-defined]
    assert tracking in shipped["title"] and f"/track/{tracking}" in shipped["body"]
    assert "Expected delivery:" in shipped["body"]  # the carrier's ETA
    # (once the shipping service runs in the stack it issues a label for this RmaEligible too: either
    # label may be the stage's one message)
    label = next(r for r in by_stage["label_issued"] if r["channel"] == "email")
    assert "QR code: " in label["body"] and "/track/" in label["body"]

    listing = (await http.get("/notifications", params={"subject_id": rma_id, "limit": 50})).json()
    assert len(listing["items"]) == 18 and {i["status"] for i in listing["items"]} == {"sent"}
    assert {i["attempts"] for i in listing["items"]} == {1}
    mine = (await http.get("/notifications", params={"recipient": customer, "channel": "sms"})).json()["items"]
    assert len(mine) == 6
    one = (await http.get(f"/notifications/{shipped['notification_id']}")).json()
    assert one["channel"] == "email" and one["locale"] == "en" and one["status"] == "sent"
    assert one["title"] == shipped["title"] and one["body"] == shipped["body"]
    assert [h["event_type"] for h in one["history"]] == ["NotificationQueued", "NotificationSent"]
    assert one["source_event_type"] == "RmaShippedOut"
    assert one["dedupe_key"] == f"{one['source_id']}:email:rma_shipped_out"

    sla = (await http.get(f"/slas/{rma_id}")).json()
    assert sla["end_reason"] == "delivered" and sla["eta"] is None and sla["current_stage"] is None
    started = [s["stage"] for s in sla["stages"] if "started_at" in s]
    assert started == ["received", "eligible", "shipped_in", "shipped_out"]  # no processing event in this story
    assert all(not s["running"] for s in sla["stages"] if "started_at" in s)


async def _all_sent(pg_dsn: str, subject_id: str, count: int) -> list[dict[str, Any]] | None:
    rows = await sink_rows(pg_dsn, subject_id)
    return rows if len(rows) >= count else None


async def test_a_failing_sender_is_retried_with_backoff_and_the_message_arrives_once(
        stack: Any, feed: AfterSalesFeed, http: httpx.AsyncClient) -> None:
    rma_id, customer = uid("rma"), uid("cust")
    r = await http.post("/senders/fail-next", json={"count": 2, "recipient": customer, "channel": "email"},
                        headers=QA)
    assert r.status_code == 200, r.text
    await feed.consumed(await feed.publish(mouse_story(rma_id, customer)[0]))

    async def sent_email() -> dict[str, Any] | None:
        items = (await http.get("/notifications", params={"subject_id": rma_id, "channel": "email"})).json()["items"]
        return items[0] if items and items[0]["status"] == "sent" else None

    email = await eventually(sent_email, "the e-mail sent after two failures", timeout=40)
    assert email["attempts"] == 3 and email["last_error"] is None
    detail = (await http.get(f"/notifications/{email['notification_id']}")).json()
    history = detail["history"]
    assert [h["event_type"] for h in history] == ["NotificationQueued", "NotificationFailed", "NotificationFailed",
                                                  "NotificationSent"]
    failed1, failed2, sent = history[1], history[2], history[3]
    assert (failed1["attempt"], failed2["attempt"], sent["attempt"]) == (1, 2, 3)
    assert "injected sender failure" in failed1["error"]
    at = [datetime.fromisoformat(h["at"]) for h in (failed1, failed2, sent)]
    due = [datetime.fromisoformat(h["next_attempt_at"]) for h in (failed1, failed2)]
    # exponential backoff (defaults: 2 s, then 4 s), durable as the row's next_attempt_at
    assert due[0] - at[0] == timedelta(seconds=2) and due[1] - at[1] == timedelta(seconds=4)
    assert at[1] >= due[0] and at[2] >= due[1]
    rows = [r for r in await sink_rows(stack.pg_dsn, rma_id) if r["channel"] == "email"]
    assert len(rows) == 1 and rows[0]["deliveries"] == 1
    others = (await http.get("/notifications", params={"subject_id": rma_id})).json()["items"]
    assert {(i["channel"], i["attempts"]) for i in others} == {("email", 3), ("sms", 1), ("in_app", 1)}
    metrics = (await http.get("/metrics")).text
    assert 'closeloop_notifications_retried_total{channel="email"}' in metrics
    assert 'closeloop_notifications_failed_total{channel="email"}' in metrics


async def test_a_permanent_failure_is_given_up_at_once(stack: Any, feed: AfterSalesFeed,
                                                       http: httpx.AsyncClient) -> None:
    rma_id, customer = uid("rma"), uid("cust")
    r = await http.post("/senders/fail-next", json={"count": 1, "recipient": customer, "channel": "sms",
                                                    "permanent": True, "error": "number not in service"},
                        headers=QA)
    assert r.status_code == 200, r.text
    await feed.consumed(await feed.publish(mouse_story(rma_id, customer)[0]))

    async def settled() -> list[dict[str, Any]] | None:
        items = (await http.get("/notifications", params={"subject_id": rma_id})).json()["items"]
        return items if len(items) == 3 and all(i["status"] in ("sent", "gave_up") for i in items) else None

    items = {i["channel"]: i for i in await eventually(settled, "three settled messages")}
    assert items["sms"]["status"] == "gave_up" and items["sms"]["attempts"] == 1
    assert "number not in service" in items["sms"]["last_error"]
    assert items["email"]["status"] == items["in_app"]["status"] == "sent"
    gave_up = (await http.get("/notifications", params={"subject_id": rma_id, "status": "gave_up"})).json()["items"]
    assert [g["channel"] for g in gave_up] == ["sms"]
    history = (await http.get(f"/notifications/{items['sms']['notification_id']}")).json()["history"]
    assert [h["event_type"] for h in history][-2:] == ["NotificationFailed", "NotificationGaveUp"]
    assert sorted(r["channel"] for r in await sink_rows(stack.pg_dsn, rma_id)) == ["email", "in_app"]


async def test_a_stage_running_past_its_sla_warns_operations_once(stack: Any, feed: AfterSalesFeed,
                                                                  http: httpx.AsyncClient) -> None:
    """Clocks start when the stage was entered (the event's time): an RMA received a day ago less 4 s
    has 4 s left of its 1-day RECEIVED SLA."""
    rma_id, customer = uid("rma"), uid("cust")
    opened_at = now() - timedelta(days=1) + timedelta(seconds=4)
    await feed.consumed(await feed.publish(mouse_story(rma_id, customer, opened_at=opened_at)[0]))
    sla = (await http.get(f"/slas/{rma_id}")).json()
    assert sla["current_stage"] == "received" and sla["breached"] is False and sla["eta_source"] == "sla"
    received = sla["stages"][0]
    assert received["stage"] == "received" and received["running"] and received["breach_warned_at"] is None
    due = datetime.fromisoformat(received["due_at"])
    assert due == opened_at + timedelta(days=1)
    # ETA: the stage's due time plus the later stages' SLAs (7 + 2 + 3 + 3 days)
    assert datetime.fromisoformat(sla["eta"]) == due + timedelta(days=15)
    before = (await http.get("/slas", params={"breached": "true", "subject_id": rma_id})).json()["items"]
    assert before == [] or now() >= due

    async def warned() -> list[dict[str, Any]] | None:
        items = (await http.get("/slas", params={"breached": "true", "subject_id": rma_id})).json()["items"]
        return items if items and items[0]["breach_warned_at"] else None

    [clock] = await eventually(warned, "the breach warning", timeout=30)
    assert clock["stage"] == "received" and clock["running"] and clock["breached"]
    assert datetime.fromisoformat(clock["breach_warned_at"]) >= due
    ops = await eventually(lambda: _ops_messages(stack.pg_dsn, rma_id), "the operations messages")
    assert sorted(r["channel"] for r in ops) == ["email", "in_app"]
    assert {r["recipient"] for r in ops} == {"operations"} and {r["template"] for r in ops} == {"sla_breach_warning"}
    email = next(r for r in ops if r["channel"] == "email")
    assert email["address"] == "operations@closeloop.local" and rma_id in email["title"] and "SLA" in email["title"]
    await asyncio.sleep(1.5)  # the timer runner polls every 0.5 s: a second warning would show by now
    types = await stream_types(stack.pg_dsn, f"sla-{rma_id}")
    assert types == ["SlaClockStarted", "SlaBreachWarning"]
    assert len(await _ops_messages(stack.pg_dsn, rma_id) or []) == 2
    # the stage ends late: stopped, still listed as breached
    eligible = mouse_story(rma_id, customer)[1]
    await feed.consumed(await feed.publish(eligible))
    sla = (await http.get(f"/slas/{rma_id}")).json()
    assert sla["current_stage"] == "eligible" and sla["breached"] is True
    assert not sla["stages"][0]["running"] and sla["stages"][0]["breached"]
    not_breached = (await http.get("/slas", params={"breached": "false", "subject_id": rma_id})).json()["items"]
    assert [c["stage"] for c in not_breached] == ["eligible"]


async def _ops_messages(pg_dsn: str, subject_id: str) -> list[dict[str, Any]] | None:
    rows = [r for r in await sink_rows(pg_dsn, subject_id) if r["audience"] == "operations"]
    return rows if len(rows) >= 2 else None


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/notifications", {"status": "bogus"}, "status"),
    ("/notifications", {"channel": "fax"}, "channel"),
    ("/notifications", {"limit": "0"}, "limit"),
    ("/notifications", {"recipient": "has space"}, "recipient"),
    ("/notifications", {"subject_id": "x" * 65}, "subject_id"),
    ("/notifications", {"cursor": "not-a-cursor"}, "cursor"),
    ("/slas", {"breached": "maybe"}, "breached"),
    ("/slas", {"stage": "closed"}, "stage"),
    ("/slas", {"limit": "501"}, "limit"),
])
async def test_bad_query_input_is_refused_naming_the_field(http: httpx.AsyncClient, path: str,
                                                           params: dict[str, str], field: str) -> None:
    r = await http.get(path, params=params)
    assert r.status_code == 422, r.text
    fields = [f["field"] for f in r.json()["error"]["details"]["fields"]]
    assert fields == [field]


async def test_unknown_ids_are_404_and_fault_injection_is_validated(http: httpx.AsyncClient) -> None:
    r = await http.get(f"/notifications/{uuid.uuid4()}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await http.get(f"/slas/{uid('rma')}")
    assert r.status_code == 404
    r = await http.post("/senders/fail-next", json={"count": 0}, headers=QA)
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "count"
    ready = (await http.get("/readyz")).json()
    assert ready["status"] == "ready" and "sent" in ready["notifications"]


# --- in-process on the same PostgreSQL ------------------------------------------------------------------
@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[EventStore]:
    s = await EventStore.connect(pg_dsn, max_size=4)
    async with s.pool.acquire() as conn:
        await migrate(conn, {"notifications": MIGRATIONS})
    try:
        yield s
    finally:
        await s.close()


def as_envelope(event: DomainEvent) -> envelope.EventEnvelope:
    _, value, _ = envelope.encode_external(event, stream_id=stream_of(event), stream_version=1,
                                           metadata={"actor": "test", "role": "service", "correlation_id": "t"})
    return envelope.decode(value)


async def test_the_outbox_dedupes_a_reaction_run_twice_and_gives_up_after_the_last_attempt(
        store: EventStore, tmp_path: Path) -> None:
    """Without the consumer's inbox (the reaction itself run twice on the same event), the dedupe key
    keeps it to one message per channel; a sender that keeps failing is given up after N attempts."""
    settings = NotificationsSettings(instance_prefix=uid("inproc") + "-", retry_max_attempts=3,
                                     retry_base_seconds=0.2, retry_max_delay_seconds=5, sink_dir=tmp_path)
    services = wire(store, settings)
    rma_id, customer = uid("rma"), uid("cust")
    opened = as_envelope(mouse_story(rma_id, customer)[0])
    for _ in range(2):
        async with store.transaction() as conn:
            await services.reactions.handle(conn, [opened])
    rows = await store.pool.fetch("SELECT notification_id, channel, dedupe_key FROM notifications"
                                  " WHERE subject_id = $1", rma_id)
    assert sorted(r["channel"] for r in rows) == ["email", "in_app", "sms"]
    for r in rows:
        assert r["dedupe_key"] == dedupe_key(str(opened.event_id), r["channel"], "rma_opened")
        assert r["notification_id"] == notification_id(r["dedupe_key"])
        assert await stream_types(store.dsn or "", f"notification-{r['notification_id']}") == ["NotificationQueued"]
    ids = [r["notification_id"] for r in rows]

    services.sender.fail_next(100, recipient=customer)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await services.dispatcher.dispatch_due(only=ids)
        statuses = {r["status"] for r in await store.pool.fetch(
            "SELECT status FROM notifications WHERE notification_id = ANY($1::text[])", ids)}
        if statuses == {"gave_up"}:
            break
        await asyncio.sleep(0.05)
    one = await services.queries.notification(ids[0])
    assert one["status"] == "gave_up" and one["attempts"] == 3
    kinds = [h["event_type"] for h in one["history"]]
    assert kinds == ["NotificationQueued", "NotificationFailed", "NotificationFailed", "NotificationFailed",
                     "NotificationGaveUp"]
    failures = [h for h in one["history"] if h["event_type"] == "NotificationFailed"]
    gaps = [datetime.fromisoformat(f["next_attempt_at"]) - datetime.fromisoformat(f["at"]) for f in failures[:2]]
    assert gaps == [timedelta(seconds=0.2), timedelta(seconds=0.4)] and failures[2]["next_attempt_at"] is None
    assert services.dispatcher.stats.gave_up == 3 and services.dispatcher.stats.retried == 6
    assert read_sink_files(tmp_path) == []

    # the sender recovers: the next stage is sent, once, to the JSONL sink as well
    services.sender.rules.clear()
    eligible = as_envelope(mouse_story(rma_id, customer)[1])  # silent: the label message notifies
    label = as_envelope(mouse_story(rma_id, customer)[2])
    async with store.transaction() as conn:
        await services.reactions.handle(conn, [eligible, label, label])
    new = [r["notification_id"] for r in await store.pool.fetch(
        "SELECT notification_id FROM notifications WHERE subject_id = $1 AND stage = 'label_issued'", rma_id)]
    assert len(new) == 3
    await services.dispatcher.dispatch_due(only=new)
    await services.dispatcher.dispatch_due(only=new)
    files = read_sink_files(tmp_path)
    assert sorted(f["channel"] for f in files) == ["email", "in_app", "sms"]
    assert all(f["template"] == "return_label_issued" and f["attempt"] == 1 for f in files)
    names = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert names == ["email.jsonl", "in_app.jsonl", "sms.jsonl"]


async def test_processing_starts_on_the_rma_event_named_in_the_settings(store: EventStore) -> None:
    """The contract has no event for PROCESSING: the rma event named by processing_started_events starts
    that clock, by its type and rma_id, whether or not this process knows its model."""
    services = wire(store, NotificationsSettings(instance_prefix=uid("inproc") + "-",
                                                 processing_started_events="RmaProcessingStarted,RmaRepairBegun"))
    rma_id, customer = uid("rma"), uid("cust")
    story = mouse_story(rma_id, customer)
    begun_at = now()
    processing = envelope.EventEnvelope(
        event_id=uuid.uuid4(), event_type="RmaRepairBegun", schema_version=1, stream_id=f"rma-{rma_id}",
        stream_version=4, global_position=0, transaction_id=0, recorded_at=begun_at,
        data={"rma_id": rma_id, "technician": "tech-7", "at": begun_at.isoformat()}, metadata={"actor": "t"})
    async with store.transaction() as conn:
        await services.reactions.handle(conn, [as_envelope(e) for e in (story[0], story[1], story[4])])
        await services.reactions.handle(conn, [processing, as_envelope(story[6])])
    sla = await services.queries.subject_sla(rma_id)
    stages = {s["stage"]: s for s in sla["stages"]}
    assert datetime.fromisoformat(stages["processing"]["started_at"]) == begun_at
    assert not stages["shipped_in"]["running"] and not stages["processing"]["running"]
    assert sla["current_stage"] == "shipped_out" and sla["eta_source"] == "carrier"
    assert sla["eta"] == story[6].eta.isoformat()  # type: ignore[attr-defined]
    assert services.reactions.rejected == []
    page = await services.queries.notifications(subject_id=rma_id, limit=2)
    seen = [i["notification_id"] for i in page["items"]]
    while page["next_cursor"]:
        page = await services.queries.notifications(subject_id=rma_id, limit=2, cursor=page["next_cursor"])
        seen += [i["notification_id"] for i in page["items"]]
    assert len(seen) == len(set(seen)) == 9  # received, shipped in, shipped out x 3 channels
