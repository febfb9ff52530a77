"""The shipping service end to end, through the running stack (seed 001, cases 5, 9, 11, 14, 15): the RMA
service's contract events are published to `rma.events` here (with the relay's envelope), so that these
tests drive shipping on its own whether or not the rma service runs beside it.

- a return label per RMA on RmaEligible, whatever the redeliveries; scanned once; forged payloads refused;
- exactly one shipment for 5 concurrent POST /shipments plus a redelivered and a re-emitted
  RmaReplacementReady: one stream, one ShipmentCreated, one row, every attempt answered with it;
- carrier tracking in both formats over HTTP and `carrier.tracking`, out of order and duplicated;
- a carrier manifest's duplicates flagged once (re-import changes nothing) and their follow-up;
- bad input refused naming the field, with nothing stored.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from faststream.kafka import KafkaBroker

from libs.domain.events import DomainEvent
from libs.messaging import envelope
from services.registry import CARRIER_TRACKING, RMA_EVENTS
from services.rma.domain.events import Contact, RmaEligible, RmaReplacementReady, ShippingAddress, WarrantyBasis
from services.shipping.bootstrap import DEV_CARRIER_SECRET
from services.shipping.entrypoints.http import SIGNATURE_HEADER, sign_carrier_body
from tests.support.wait import until

pytestmark = pytest.mark.e2e

SERVICE = {"X-Actor": "wms-1", "X-Role": "service"}
TAIPEI = ShippingAddress(name="林小姐", line1="中山北路二段 1 號", city="台北市", postal_code="104")
TOKYO = ShippingAddress(name="Sato", line1="1-1 Marunouchi", city="Tokyo", country="JP")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class RmaFeed:
    """Publishes rma contract events to `rma.events` the way the relay does (key = stream id)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker
        self.versions: Counter[str] = Counter()

    async def publish(self, event: DomainEvent, *, event_id: uuid.UUID | None = None) -> tuple[bytes, bytes,
                                                                                               dict[str, str]]:
        stream_id = f"rma-{event.rma_id}"  # type: ignore[attr-defined]
        self.versions[stream_id] += 1
        message = envelope.encode_external(event, stream_id=stream_id, stream_version=self.versions[stream_id],
                                           metadata={"actor": "rma-feed", "role": "service",
                                                     "correlation_id": stream_id, "causation_id": None},
                                           event_id=event_id or uuid.uuid4())
        await self.redeliver(message)
        return message

    async def redeliver(self, message: tuple[bytes, bytes, dict[str, str]]) -> None:
        key, value, headers = message
        await self.broker.publish(value, topic=RMA_EVENTS, key=key, headers=headers,
                                  correlation_id=headers[envelope.H_CORRELATION])


class Shipping:
    """The shipping API of the running stack, and what its database says."""

    def __init__(self, stack: Any, http: httpx.AsyncClient, db: asyncpg.Connection, broker: KafkaBroker) -> None:
        self.url, self.http, self.db, self.broker = stack.url("shipping"), http, db, broker
        self.consumer = f"{stack.prefix}shipping"

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(f"{self.url}{path}", params=params or None)

    async def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None, *,
                   content: bytes | None = None) -> httpx.Response:
        if content is not None:
            return await self.http.post(f"{self.url}{path}", content=content, headers=headers)
        return await self.http.post(f"{self.url}{path}", json=body, headers=headers)

    async def carrier(self, carrier: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
        return await self.post(f"/carriers/{carrier}/events", content=body, headers={
            "Content-Type": content_type, SIGNATURE_HEADER: sign_carrier_body(DEV_CARRIER_SECRET, body)})

    async def kafka_carrier(self, carrier: str | None, body: bytes, key: str) -> None:
        await self.broker.publish(body, topic=CARRIER_TRACKING, key=key.encode(),
                                  headers={"carrier": carrier} if carrier else None)

    async def count(self, stream_id: str, event_type: str) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = $2",
                                          stream_id, event_type))

    async def types(self, prefix: str) -> list[str]:
        rows = await self.db.fetch("SELECT event_type FROM events WHERE stream_id LIKE $1 ORDER BY global_position",
                                   prefix + "%")
        return [r["event_type"] for r in rows]

    async def processed(self, *event_ids: str) -> bool:
        n = await self.db.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
                                   self.consumer, [uuid.UUID(e) for e in event_ids])
        return int(n) == len(set(event_ids))

    async def track(self, ref: str, until_status: str | None = None, timeout: float = 30) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            r = await self.get(f"/track/{ref}")
            if r.status_code == 200 and (until_status is None or r.json()["status"] == until_status):
                return dict(r.json())
            return None

        return dict(await until(f"{ref} tracked as {until_status}", check, timeout))

    async def ship(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        return await self.post("/shipments", body, {**SERVICE, "Idempotency-Key": key or uid("key")})


@pytest.fixture(scope="module")
async def kafka(stack: Any) -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker(stack.kafka_bootstrap, acks="all", enable_idempotence=False, client_id="shipping-e2e")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def shipping(stack: Any, kafka: KafkaBroker) -> AsyncIterator[Shipping]:
    db = await asyncpg.connect(stack.pg_dsn)
    async with httpx.AsyncClient(timeout=30, auth=stack.auth) as http:
        try:
            yield Shipping(stack, http, db, kafka)
        finally:
            await db.close()


@pytest.fixture
def feed(kafka: KafkaBroker) -> RmaFeed:
    return RmaFeed(kafka)


def contact(customer: str) -> Contact:
    return Contact(customer_id=customer, email=f"{customer}@example.com", phone="0912345678")


def eligible(rma_id: str, customer: str) -> RmaEligible:
    now = datetime.now(UTC)
    return RmaEligible(rma_id=rma_id, serial=uid("SN"), sku="MOUSE-OPT-2003",
                       basis=WarrantyBasis(source="registration", reference="REG-1", checked_on=now.date()),
                       contact=contact(customer), ship_to=TAIPEI, at=now)


def replacement_ready(rma_id: str, customer: str, *, sku: str = "MOUSE-OPT-2005") -> RmaReplacementReady:
    return RmaReplacementReady(rma_id=rma_id, sku=sku, same_sku=False, warehouse_id="WH-TPE",
                               contact=contact(customer), ship_to=TAIPEI, at=datetime.now(UTC))


def shipment_body(rma_id: str, customer: str, *, sku: str = "MOUSE-OPT-2005", **extra: Any) -> dict[str, Any]:
    return {"rma_id": rma_id, "action": "ship_replacement", "sku": sku, "warehouse_id": "WH-TPE",
            "ship_to": TAIPEI.model_dump(), "contact": contact(customer).model_dump(), **extra}


# --- return labels (case 14) -----------------------------------------------------------------------


async def test_a_return_label_is_issued_once_per_rma_whatever_the_redeliveries(shipping: Shipping,
                                                                              feed: RmaFeed) -> None:
    rma, customer = uid("RMA"), uid("cust")
    first = await feed.publish(eligible(rma, customer))
    await feed.redeliver(first)  # the same event again (Kafka redelivery)
    again = await feed.publish(eligible(rma, customer))  # re-emitted by the rma service (another event id)

    async def label() -> list[dict[str, Any]] | None:
        r = await shipping.get("/labels", rma_id=rma)
        return r.json()["labels"] if r.status_code == 200 and r.json()["labels"] else None

    [view] = await until("the return label", label)
    await until("both RmaEligible processed",
                lambda: shipping.processed(first[2][envelope.H_EVENT_ID], again[2][envelope.H_EVENT_ID]))
    assert await shipping.count(f"label-{view['label_id']}", "ReturnLabelIssued") == 1
    assert len((await shipping.get("/labels", rma_id=rma)).json()["labels"]) == 1
    r = await shipping.get(f"/labels/{view['label_id']}")
    assert r.status_code == 200
    label_doc = r.json()
    assert label_doc["rma_id"] == rma and label_doc["status"] == "issued" and label_doc["carrier"] == "island"
    assert label_doc["barcode_payload"].startswith(f"CL1|{view['label_id']}|{rma}|")
    assert label_doc["qr_payload"].startswith("closeloop://return-label?v=1&label=") and f"ref={rma}" in \
        label_doc["qr_payload"]
    assert label_doc["contact"]["customer_id"] == customer
    assert (await shipping.get("/labels/RL-NOPE")).status_code == 404


async def test_the_inbound_scan_is_recorded_once_and_forged_payloads_are_refused(shipping: Shipping,
                                                                               feed: RmaFeed) -> None:
    rma, customer = uid("RMA"), uid("cust")
    await feed.publish(eligible(rma, customer))

    async def label() -> dict[str, Any] | None:
        r = await shipping.get("/labels", rma_id=rma)
        return r.json()["labels"][0] if r.status_code == 200 and r.json()["labels"] else None

    lab = await until("the return label", label)
    stream = f"label-{lab['label_id']}"
    forged = lab["barcode_payload"].rsplit("|", 1)[0] + "|AAAAAAAAAAAAAAAAAAAAAAAA"
    for path, body in [(f"/labels/{lab['label_id']}/scan", {"payload": forged}), ("/labels/scan", {"payload": forged}),
                       ("/labels/scan", {"payload": lab["barcode_payload"].replace(rma, uid("RMA"))}),
                       ("/labels/scan", {"payload": "RMA-2025-001"})]:
        r = await shipping.post(path, body, SERVICE)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["fields"][0]["field"] == "payload"
    r = await shipping.post(f"/labels/{lab['label_id']}/scan", {}, {"X-Actor": customer, "X-Role": "customer"})
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "X-Role"
    assert await shipping.count(stream, "InboundParcelScanned") == 0  # nothing stored by the refusals

    # The customer's parcel on its way in: the carrier's events are bound to the label's tracking number.
    r = await shipping.carrier("island", island_csv(lab["tracking_number"], ("已取件", "2026/03/02 10:15", 1)),
                               "text/csv")
    assert r.status_code == 200 and r.json()["parcels"][0]["parcel"] == "label", r.text
    inbound = await shipping.track(lab["tracking_number"], "InTransit")
    assert inbound["parcel"] == "return" and inbound["label_id"] == lab["label_id"] and inbound["rma_id"] == rma

    r = await shipping.post("/labels/scan", {"payload": lab["qr_payload"], "location": "台北維修中心"}, SERVICE)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "scanned" and r.json()["location"] == "台北維修中心"
    assert "Label-Already-Scanned" not in r.headers
    again = await shipping.post(f"/labels/{lab['label_id']}/scan",
                                {"payload": lab["barcode_payload"], "location": "elsewhere"}, SERVICE)
    assert again.status_code == 200 and again.headers["Label-Already-Scanned"] == "true"
    assert again.json()["location"] == "台北維修中心" and again.json()["scanned_at"] == r.json()["scanned_at"]
    assert await shipping.count(stream, "InboundParcelScanned") == 1


# --- exactly one shipment (cases 5 and 11) ---------------------------------------------------------


async def test_five_concurrent_requests_and_a_redelivered_replacement_ready_make_exactly_one_shipment(
        shipping: Shipping, feed: RmaFeed) -> None:
    rma, customer = uid("RMA"), uid("cust")
    body = shipment_body(rma, customer)
    key = uid("key")
    ready = replacement_ready(rma, customer)

    async def event_then_redelivery() -> tuple[bytes, bytes, dict[str, str]]:
        message = await feed.publish(ready)
        await feed.redeliver(message)
        return message

    published = asyncio.create_task(event_then_redelivery())
    responses = list(await asyncio.gather(*[shipping.ship(body) for _ in range(4)], shipping.ship(body, key)))
    message = await published
    responses.append(await shipping.ship(body, key))  # the client's retry with its key
    reemitted = await feed.publish(replacement_ready(rma, customer))  # the rma service emits it again
    await until("the RmaReplacementReady (both ids) processed",
                lambda: shipping.processed(message[2][envelope.H_EVENT_ID], reemitted[2][envelope.H_EVENT_ID]))

    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    assert sum(r.status_code == 201 for r in responses) <= 1
    assert all(r.headers.get("Shipment-Existing") == "true" for r in responses if r.status_code == 200)
    assert responses[-1].status_code == 200 and responses[-1].headers["Idempotent-Replayed"] == "true"
    ids = {r.json()["shipment_id"] for r in responses}
    assert len(ids) == 1
    [shipment_id] = ids
    bodies = {json.dumps(r.json(), sort_keys=True) for r in responses}
    assert len(bodies) == 1  # the same body every time
    stream = f"shipment-{shipment_id}"
    assert await shipping.count(stream, "ShipmentCreated") == 1
    assert await shipping.db.fetchval("SELECT count(*) FROM events WHERE event_type = 'ShipmentCreated' "
                                      "AND data->>'rma_id' = $1", rma) == 1
    assert await shipping.db.fetchval("SELECT count(*) FROM shipping_shipments WHERE rma_id = $1", rma) == 1
    listed = (await shipping.get("/shipments", rma_id=rma)).json()["shipments"]
    assert [s["shipment_id"] for s in listed] == [shipment_id]
    view = (await shipping.get(f"/shipments/{shipment_id}")).json()
    assert view["rma_id"] == rma and view["action"] == "ship_replacement" and view["carrier"] == "island"
    assert view["status"] == "Created" and view["eta_source"] == "service_level" and view["eta"]

    # Asking for something else under the same (RMA, action) is refused, naming what differs.
    r = await shipping.ship(shipment_body(rma, customer, sku="MOUSE-OTHER"))
    assert r.status_code == 409 and r.json()["error"]["details"]["fields"] == [
        {"field": "sku", "rule": "differs from the existing shipment"}]
    r = await shipping.post("/shipments", shipment_body(rma, customer, warehouse_id="WH-2"),
                            {**SERVICE, "Idempotency-Key": key})
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "Idempotency-Key"
    assert await shipping.count(stream, "ShipmentCreated") == 1


async def test_another_action_is_another_shipment_and_an_order_can_be_shipped_too(shipping: Shipping) -> None:
    rma, customer, order = uid("RMA"), uid("cust"), uid("ORD")
    a = await shipping.ship(shipment_body(rma, customer))
    b = await shipping.ship(shipment_body(rma, customer, action="ship_accessory", sku="USB-RECEIVER"))
    c = await shipping.ship({**shipment_body(None, customer), "rma_id": None, "order_id": order,  # type: ignore[arg-type]
                             "action": "ship_order", "ship_to": TOKYO.model_dump(), "service_level": "standard"})
    assert (a.status_code, b.status_code, c.status_code) == (201, 201, 201), c.text
    assert a.json()["shipment_id"] != b.json()["shipment_id"]
    assert c.json()["order_id"] == order and c.json()["carrier"] == "globex" and \
        c.json()["tracking_number"].startswith("GX") and c.json()["service_level"] == "standard"
    assert a.headers["Location"] == f"/shipments/{a.json()['shipment_id']}"
    assert [s["shipment_id"] for s in (await shipping.get("/shipments", order_id=order)).json()["shipments"]] == [
        c.json()["shipment_id"]]


# --- tracking (case 9) ------------------------------------------------------------------------------


def island_csv(number: str, *rows: tuple[str, str, int]) -> bytes:
    lines = ["BillNo,StatusName,StatusTime,StationName,SerialNo,Memo"]
    lines += [f"{number},{status},{when},新竹營業所,{serial}," for status, when, serial in rows]
    return ("\n".join(lines) + "\n").encode()


def globex_body(number: str, *events: tuple[str, str, str], eta: str | None = None) -> bytes:
    shipment: dict[str, Any] = {"trackingNumber": number, "events": [
        {"eventId": eid, "eventCode": code, "timestamp": ts, "description": f"{code} scan",
         "location": {"city": "Tokyo", "countryCode": "JP"}} for eid, code, ts in events]}
    if eta:
        shipment["estimatedDeliveryDate"] = eta
    return json.dumps({"webhookId": uid("whk"), "shipments": [shipment]}).encode()


async def test_island_tracking_over_http_and_kafka_out_of_order_and_duplicated(shipping: Shipping) -> None:
    rma, customer = uid("RMA"), uid("cust")
    created = await shipping.ship(shipment_body(rma, customer))
    number, shipment_id = created.json()["tracking_number"], created.json()["shipment_id"]
    stream = f"shipment-{shipment_id}"
    today = datetime.now(UTC).astimezone()
    day = (today - timedelta(days=1)).strftime("%Y/%m/%d")
    roc = f"{int(today.strftime('%Y')) - 1911}/{today.strftime('%m/%d')}"

    # OutForDelivery arrives before the pick-up it follows; the pick-up comes late, then again.
    r = await shipping.carrier("island", island_csv(number, ("配送中", f"{roc} 08:40", 2)), "text/csv")
    assert r.status_code == 200, r.text
    assert r.json()["parcels"][0]["status"] == "OutForDelivery" and r.json()["recorded"] == 1
    late = island_csv(number, ("已取件", f"{day} 10:15", 1), ("配送中", f"{roc} 08:40", 2))
    r = await shipping.carrier("island", late, "text/csv")
    assert r.json()["recorded"] == 1 and r.json()["duplicates"] == 1
    assert r.json()["parcels"][0]["status"] == "OutForDelivery" and not r.json()["parcels"][0]["status_changed"]
    await shipping.kafka_carrier("island", late, number)  # the same events on the topic: nothing new
    delivered = json.dumps({"Data": [{"BillNo": number, "StatusName": "已送達", "StatusTime": f"{roc} 14:40",
                                      "StationName": "新竹營業所", "SerialNo": 3}]}).encode()
    await shipping.kafka_carrier(None, delivered, number)  # no carrier header: the shape tells
    tracked = await shipping.track(number, "Delivered")
    assert tracked["shipment_id"] == shipment_id and tracked["rma_id"] == rma and tracked["status_zh"] == "已送達"
    assert tracked["eta"] is None
    assert [(h["status"], h["carrier_status"]) for h in tracked["history"]] == [
        ("InTransit", "已取件"), ("OutForDelivery", "配送中"), ("Delivered", "已送達")]
    assert [h["via"] for h in tracked["history"]] == ["http", "http", "kafka"]

    # An in-transit scan stamped before the delivery arrives after it: history only.
    r = await shipping.carrier("island", island_csv(number, ("轉運中", f"{roc} 09:00", 4)), "text/csv")
    assert r.json()["parcels"][0]["status"] == "Delivered" and not r.json()["parcels"][0]["status_changed"]
    assert len((await shipping.track(number))["history"]) == 4
    changes = await shipping.db.fetch("SELECT data FROM events WHERE stream_id = $1 AND event_type = "
                                      "'ShipmentStatusChanged' ORDER BY stream_version", stream)
    assert [json.loads(c["data"])["status"] if isinstance(c["data"], str) else c["data"]["status"]
            for c in changes] == ["OutForDelivery", "Delivered"]
    assert await shipping.count(stream, "ShipmentTrackingRecorded") == 4
    by_rma = await shipping.track(rma)
    assert by_rma["matched"] == "rma_id" and by_rma["shipment_id"] == shipment_id and by_rma["status"] == "Delivered"


async def test_globex_tracking_over_http_and_kafka_with_eta_and_return_to_sender(shipping: Shipping) -> None:
    order = uid("ORD")
    created = await shipping.ship({"order_id": order, "action": "ship_order", "sku": "MOUSE-OPT-2005",
                                   "warehouse_id": "WH-TPE", "ship_to": TOKYO.model_dump()})
    number = created.json()["tracking_number"]
    assert created.json()["carrier"] == "globex"
    now = datetime.now(UTC).replace(microsecond=0)
    iso = lambda hours: (now - timedelta(hours=hours)).astimezone().isoformat()  # noqa: E731
    eta = (now + timedelta(days=2)).astimezone().isoformat()
    ids = [uid("ev") for _ in range(5)]
    r = await shipping.carrier("globex", globex_body(number, (ids[0], "PU", iso(30)), (ids[1], "DF", iso(20)),
                                                     eta=eta))
    assert r.status_code == 200, r.text
    view = await shipping.track(number, "InTransit")
    assert view["eta_source"] == "carrier" and datetime.fromisoformat(view["eta"]) == datetime.fromisoformat(eta)
    # On the topic: an exception, then the same webhook again (duplicates), out of order.
    await shipping.kafka_carrier("globex", globex_body(number, (ids[2], "NH", iso(5))), number)
    await shipping.kafka_carrier("globex", globex_body(number, (ids[1], "DF", iso(20)), (ids[0], "PU", iso(30))),
                                 number)
    await shipping.track(number, "Exception")
    await shipping.carrier("globex", globex_body(number, (ids[3], "RS", iso(1))))
    view = await shipping.track(number, "ReturnedToSender")
    assert [h["carrier_status"] for h in view["history"]] == ["PU", "DF", "NH", "RS"]
    assert view["order_id"] == order and view["eta"] is None
    # Final: a later delivery scan (back at the sender's) does not leave ReturnedToSender.
    await shipping.carrier("globex", globex_body(number, (ids[4], "DL", iso(0))))
    view = await shipping.track(number)
    assert view["status"] == "ReturnedToSender" and len(view["history"]) == 5
    stream = f"shipment-{created.json()['shipment_id']}"
    assert await shipping.count(stream, "ShipmentStatusChanged") == 3  # InTransit, Exception, ReturnedToSender


async def test_carrier_input_refused_with_nothing_stored(shipping: Shipping) -> None:
    created = await shipping.ship(shipment_body(uid("RMA"), uid("cust")))
    number = created.json()["tracking_number"]
    stream = f"shipment-{created.json()['shipment_id']}"
    body = island_csv(number, ("已取件", "2026/03/02 10:15", 1))
    r = await shipping.post("/carriers/island/events", content=body, headers={
        "Content-Type": "text/csv", SIGNATURE_HEADER: sign_carrier_body("wrong-secret", body)})
    assert r.status_code == 400 and r.json()["error"]["details"]["fields"][0]["field"] == SIGNATURE_HEADER
    r = await shipping.carrier("island", island_csv(number, ("已取件", "2026/03/02 10:15", 1),
                                                    ("飛走了", "2026/03/02 11:00", 2)), "text/csv")
    assert r.status_code == 422
    [problem] = r.json()["error"]["details"]["fields"]
    assert problem["field"] == "line 3.StatusName" and "貨態" in problem["rule"]
    r = await shipping.carrier("globex", json.dumps({"shipments": [{"trackingNumber": number, "events": [
        {"eventCode": "DL", "timestamp": "2026-03-02 10:00"}]}]}).encode())
    assert r.status_code == 422
    assert r.json()["error"]["details"]["fields"][0]["field"] == "shipments[0].events[0].timestamp"
    assert (await shipping.post("/carriers/pigeon/events", content=b"{}")).status_code == 422
    assert await shipping.count(stream, "ShipmentTrackingRecorded") == 0
    # Unknown tracking numbers are kept, not applied; unknown references are 404.
    stranger = uid("GX").replace("-", "").upper()[:14]
    r = await shipping.carrier("globex", globex_body(stranger, (uid("ev"), "PU", "2026-03-02T10:00:00+08:00")))
    assert r.status_code == 200 and r.json()["unmatched"] == 1
    assert (await shipping.get(f"/track/{stranger}")).status_code == 404
    # A poison message on the topic is dead-lettered and does not stop the consumer.
    await shipping.kafka_carrier("globex", b'{"shipments": "nope"}', "poison")
    await shipping.kafka_carrier("island", island_csv(number, ("已取件", "2026/03/02 10:15", 1)), number)
    await shipping.track(number, "InTransit")


# --- manifests and duplicates (case 15) -------------------------------------------------------------


def manifest(*rows: str) -> bytes:
    header = "tracking_number,shipped_at,rma_id,order_id,action,carrier,sku,warehouse_id,recipient_name,reference"
    return ("\n".join([header, *rows]) + "\n").encode()


async def test_manifest_duplicates_are_flagged_once_and_followed_up(shipping: Shipping) -> None:
    rma, other_rma, customer = uid("RMA"), uid("RMA"), uid("cust")
    ours = (await shipping.ship(shipment_body(rma, customer))).json()
    extra_number = str(uuid.uuid4().int)[:12]
    outside_number = str(uuid.uuid4().int)[:12]
    body = manifest(
        f"{ours['tracking_number']},2026-03-02 09:00,{rma},,ship_replacement,island,MOUSE-OPT-2005,WH-TPE,林小姐,",
        f"{extra_number},2026-03-02 11:00,{rma},,ship_replacement,island,MOUSE-OPT-2005,WH-HSZ,林小姐,PICK-77",
        f"{outside_number},2026-03-02 12:00,{other_rma},,ship_replacement,island,MOUSE-OPT-2005,WH-HSZ,,",
        "bad number!,2026-03-02 12:00,,,ship_replacement,island,,,,",
    )
    importer = {"X-Actor": "ops-import", "X-Role": "importer"}
    r = await shipping.post("/manifests/import?source=wms-daily", headers={**importer, "Content-Type": "text/csv"},
                            content=body)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["outcomes"] == {"closeloop_shipment": 1, "duplicate": 1, "external_shipment": 1,
                                  "already_imported": 0}
    assert report["rejected_lines"] == [5] and {e["field"] for e in report["errors"]} == {"tracking_number",
                                                                                          "rma_id"}
    [dup_id] = report["duplicates"]
    again = await shipping.post("/manifests/import?source=wms-daily",
                                headers={**importer, "Content-Type": "text/csv"}, content=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true" and again.json() == report
    assert await shipping.count(f"shipment_duplicate-{dup_id}", "DuplicateShipmentDetected") == 1
    assert (await shipping.get(f"/manifests/{report['manifest_id']}")).json()["duplicates"] == [dup_id]

    dup = (await shipping.get(f"/duplicates/{dup_id}")).json()
    assert dup["status"] == "open" and dup["rma_id"] == rma
    assert dup["original"]["shipment_id"] == ours["shipment_id"] and dup["extra"]["tracking_number"] == extra_number
    assert dup["contact"]["customer_id"] == customer
    assert dup_id in [d["duplicate_id"] for d in (await shipping.get("/duplicates", status="open")).json()[
        "duplicates"]]

    # Follow-up: ask for the extra unit back; its label comes back scanned in and closes the case.
    cs = {"X-Actor": "cs-amy", "X-Role": "reconciler"}
    r = await shipping.post(f"/duplicates/{dup_id}/resolve", {"resolution": "return_requested",
                                                              "note": "致電林小姐,請協助寄回多出的一隻滑鼠"}, cs)
    assert r.status_code == 200, r.text
    label = r.json()["label"]
    assert r.json()["duplicate"]["status"] == "return_requested" and label["purpose"] == "extra_unit_return"
    r = await shipping.post("/labels/scan", {"payload": label["barcode_payload"], "location": "台北維修中心"}, SERVICE)
    assert r.status_code == 200
    dup = (await shipping.get(f"/duplicates/{dup_id}")).json()
    assert (dup["status"], dup["resolution"], dup["allowed_resolutions"]) == ("resolved", "unit_returned", [])
    assert dup["note"] == "致電林小姐,請協助寄回多出的一隻滑鼠"
    assert await shipping.types(f"shipment_duplicate-{dup_id}") == [
        "DuplicateShipmentDetected", "ShipmentDuplicateReturnRequested", "ShipmentDuplicateResolved"]
    assert await shipping.count(f"label-{label['label_id']}", "InboundParcelScanned") == 0  # the RMA does not move
    r = await shipping.post(f"/duplicates/{dup_id}/resolve", {"resolution": "goodwill_kept", "note": "x"}, cs)
    assert r.status_code == 409 and r.json()["error"]["details"]["allowed_commands"] == []

    # Closeloop now ships the RMA a parcel from outside already served: flagged, then offset.
    late = await shipping.ship(shipment_body(other_rma, customer))
    assert late.status_code == 201

    async def flagged() -> list[dict[str, Any]]:
        rows = (await shipping.get("/duplicates", status="open")).json()["duplicates"]
        return [d for d in rows if d["rma_id"] == other_rma]

    [second] = await until("the duplicate of the late shipment", flagged)
    assert second["original"]["tracking_number"] == outside_number
    assert second["extra"]["shipment_id"] == late.json()["shipment_id"]
    r = await shipping.post(f"/duplicates/{second['duplicate_id']}/resolve",
                            {"resolution": "offset_against_later_service", "note": "下次保養時扣抵",
                             "offset_reference": "ORD-next-service"}, {"X-Actor": "boss", "X-Role": "approver"})
    assert r.status_code == 200 and r.json()["duplicate"]["status"] == "resolved"
    assert r.json()["duplicate"]["offset_reference"] == "ORD-next-service" and r.json()["label"] is None


async def test_bad_input_is_refused_naming_the_field_with_nothing_stored(shipping: Shipping) -> None:
    rma, customer = uid("RMA"), uid("cust")
    body = shipment_body(rma, customer)
    cases: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        (body, SERVICE, 422, "Idempotency-Key"),
        ({**body, "order_id": uid("ORD")}, {**SERVICE, "Idempotency-Key": uid("k")}, 422, "rma_id"),
        ({**body, "ship_to": {**TAIPEI.model_dump(), "country": "Taiwan"}}, {**SERVICE, "Idempotency-Key": uid("k")},
         422, "ship_to.country"),
        ({**body, "action": "Ship It"}, {**SERVICE, "Idempotency-Key": uid("k")}, 422, "action"),
        ({**body, "carrier": "pigeon"}, {**SERVICE, "Idempotency-Key": uid("k")}, 422, "carrier"),
        ({**body, "service_level": "overnight"}, {**SERVICE, "Idempotency-Key": uid("k")}, 422, "service_level"),
        (body, {"X-Actor": customer, "X-Role": "customer", "Idempotency-Key": uid("k")}, 403, "X-Role"),
    ]
    for payload, headers, status, field in cases:
        r = await shipping.post("/shipments", payload, headers)
        assert r.status_code == status, (field, r.text)
        assert field in [f["field"] for f in r.json()["error"]["details"]["fields"]], (field, r.text)
    assert await shipping.db.fetchval("SELECT count(*) FROM shipping_shipments WHERE rma_id = $1", rma) == 0
    assert await shipping.db.fetchval("SELECT count(*) FROM events WHERE data->>'rma_id' = $1", rma) == 0

    r = await shipping.post("/manifests/import", headers={"X-Role": "importer", "Content-Type": "text/csv"},
                            content=b"tracking_number,rma_id,action,carrier\n123,RMA-1,x,island\n")
    assert r.status_code == 422 and [f["field"] for f in r.json()["error"]["details"]["fields"]] == ["shipped_at"]
    r = await shipping.post("/manifests/import", headers={"X-Role": "customer", "Content-Type": "text/csv"},
                            content=manifest("1,2026-03-02 09:00,RMA-1,,x,island,,,,"))
    assert r.status_code == 403
    r = await shipping.post("/duplicates/DUP-NOPE/resolve", {"resolution": "shrug", "note": "x"},
                            {"X-Role": "reconciler"})
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "resolution"
    r = await shipping.post("/duplicates/DUP-NOPE/resolve", {"resolution": "goodwill_kept", "note": "x"},
                            {"X-Role": "reconciler"})
    assert r.status_code == 404
    assert (await shipping.get("/track/NOT-A-THING")).status_code == 404
    assert (await shipping.get("/shipments/SH-NOPE")).status_code == 404
