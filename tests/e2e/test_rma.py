"""The RMA service end to end (seed 001), through the running stack: intake with the fault dictionary
(a bad code is 422 and stores nothing), warranty eligible / manual review / rejected at the exact
boundary, refused transitions (409 with the allowed commands), end-of-life substitution with the
approver (approved, or refused with the approver's alternative), stock transfers (refused -> the
next source, accepted -> ready) and their time-to-live escalation, and the flow driven by shipping's
contract events on Kafka (parcel in, shipment created, delivered -> CLOSED; redeliveries change
nothing), then the replacement failing again, flagged as a repeat.

Shipping's events are published the way its relay would (libs/messaging/envelope.py). When the
shipping service runs in the stack it creates the outbound shipment itself; the tests then wait for
it instead of publishing one, and still stand in for the carrier's delivery."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from faststream.kafka import KafkaBroker

from libs.domain.events import DomainEvent
from libs.messaging import envelope
from services.registry import SHIPPING_EVENTS
from services.rma.domain.events import ShippingAddress
from services.shipping.domain import events as ship

pytestmark = pytest.mark.e2e

TAIPEI = ZoneInfo("Asia/Taipei")
CENTRE, DEPT_A, DEPT_B = "centre", "dept-a", "dept-b"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def twd(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "TWD"}


STAFF = {"X-Actor": "tech-1", "X-Role": "service"}
APPROVER = {"X-Actor": "boss-1", "X-Role": "approver"}
RECONCILER = {"X-Actor": "rec-1", "X-Role": "reconciler"}


class ShippingFeed:
    """Publishes shipping contract events to `shipping.events` as shipping's relay would."""

    def __init__(self, bootstrap: str) -> None:
        self.broker = KafkaBroker(bootstrap, acks="all", enable_idempotence=False, client_id="closeloop-rma-e2e")
        self.versions: dict[str, int] = {}

    async def publish(self, event: DomainEvent, stream_id: str) -> tuple[bytes, bytes, dict[str, str]]:
        self.versions[stream_id] = self.versions.get(stream_id, 0) + 1
        message = envelope.encode_external(event, stream_id=stream_id, stream_version=self.versions[stream_id],
                                           metadata={"actor": "shipping", "role": "service",
                                                     "correlation_id": f"rma-{getattr(event, 'rma_id', '')}",
                                                     "causation_id": None})
        await self.redeliver(message)
        return message

    async def redeliver(self, message: tuple[bytes, bytes, dict[str, str]]) -> None:
        """The same message again (same event id), as Kafka redelivers after a consumer restart."""
        key, value, headers = message
        await self.broker.publish(value, topic=SHIPPING_EVENTS, key=key, headers=headers,
                                  correlation_id=headers[envelope.H_CORRELATION])


@pytest.fixture(scope="module")
async def feed(stack: Any) -> AsyncIterator[ShippingFeed]:
    f = ShippingFeed(stack.kafka_bootstrap)
    await f.broker.start()
    try:
        yield f
    finally:
        await f.broker.stop()


class RmaApi:
    def __init__(self, stack: Any, http: httpx.AsyncClient) -> None:
        self.stack, self.http, self.url = stack, http, stack.url("rma")
        self.shipping_runs = "shipping" in stack.children

    async def post(self, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(f"{self.url}{path}", json=body, headers=headers)

    async def ok(self, path: str, body: dict[str, Any] | None, headers: dict[str, str], status: int = 200) -> Any:
        r = await self.post(path, body, headers)
        assert r.status_code == status, r.text
        return r.json()

    async def put(self, path: str, body: dict[str, Any], headers: dict[str, str] = STAFF) -> Any:
        r = await self.http.put(f"{self.url}{path}", json=body, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def get(self, path: str, **params: Any) -> Any:
        r = await self.http.get(f"{self.url}{path}", params=params or None)
        assert r.status_code == 200, r.text
        return r.json()

    async def wait(self, rma_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.get(f"/rmas/{rma_id}")
            if until(last):
                return last
            await asyncio.sleep(0.1)
        raise TimeoutError(f"rma {rma_id} never got there; last seen: {last}")

    async def catalogue(self, *, threshold: int = 20000) -> dict[str, str]:
        """Random SKUs for one test: an end-of-life model with two substitutes (as in the seed: the newer
        model at the same price, a better one TWD 400 dearer, over the approval threshold), and an extra
        SKU outside the rules."""
        run = uuid.uuid4().hex[:8]
        skus = {"old": f"OLD-{run}", "new": f"NEW-{run}", "pro": f"PRO-{run}", "alt": f"ALT-{run}"}
        for key, price in (("new", 129000), ("pro", 169000), ("alt", 139000)):
            await self.put(f"/catalogue/{skus[key]}", {"name": f"mouse {key}", "price": twd(price),
                                                       "warranty_days": 365})
        await self.put(f"/catalogue/{skus['old']}", {
            "name": "wireless optical mouse (2003)", "price": twd(129000), "warranty_days": 365, "eol": True,
            "approval_threshold": twd(threshold),
            "substitutes": [{"alt_sku": skus["new"], "feature_score": 80, "price_delta": twd(0)},
                            {"alt_sku": skus["pro"], "feature_score": 95, "price_delta": twd(40000)}]})
        skus["run"] = run
        return skus

    async def eligible(self, sku: str, *, customer: str | None = None, warehouse: str | None = None,
                       serial: str | None = None, bought_days_ago: int = 200) -> dict[str, Any]:
        serial = serial or uid("SN")
        today = datetime.now(TAIPEI).date()
        await self.ok("/sales-records", {"serial": serial, "sku": sku, "invoice_number": uid("INV"),
                                         "sold_on": (today - timedelta(days=bought_days_ago)).isoformat()}, STAFF)
        view = await self.open(serial, sku, customer=customer, warehouse=warehouse)
        assert view["status"] == "ELIGIBLE", view
        return view

    async def open(self, serial: str, sku: str, *, customer: str | None = None, warehouse: str | None = None,
                   fault_code: str = "left_button.double_click") -> dict[str, Any]:
        customer = customer or uid("cust")
        body = {"serial": serial, "sku": sku, "fault_code": fault_code, "description": "左鍵單擊變雙擊",
                "attachments": ["s3://rma-uploads/clip.mp4"], "warehouse_id": warehouse,
                "contact": {"customer_id": customer, "email": f"{customer}@example.com", "locale": "zh-TW"},
                "ship_to": {"name": "王小明", "line1": "復興南路一段 100 號", "city": "臺北市", "postal_code": "106"}}
        return await self.ok("/rmas", body, {"X-Actor": customer, "X-Role": "customer"}, 201)  # type: ignore[no-any-return]

    async def shipped_in(self, feed: ShippingFeed, rma_id: str) -> dict[str, Any]:
        label_id = uid("lbl")
        now = datetime.now(UTC)
        message = await feed.publish(ship.InboundParcelScanned(label_id=label_id, rma_id=rma_id, location="Taipei",
                                                               scanned_at=now, at=now), f"label-{label_id}")
        await feed.redeliver(message)
        return await self.wait(rma_id, lambda v: v["status"] == "SHIPPED_IN")

    async def shipped_out(self, feed: ShippingFeed, view: dict[str, Any]) -> dict[str, Any]:
        """SHIPPED_OUT: shipping's own shipment when it runs, else ShipmentCreated published here."""
        rma_id = view["rma_id"]
        if not self.shipping_runs:
            now = datetime.now(UTC)
            shipment_id = uid("shp")
            r = view["replacement"]
            message = await feed.publish(ship.ShipmentCreated(
                shipment_id=shipment_id, rma_id=rma_id, action="ship_replacement", sku=r["sku"],
                warehouse_id=r["warehouse_id"], carrier="tcat", tracking_number=uid("TC").upper(),
                ship_to=ShippingAddress.model_validate(view["ship_to"]), eta=now + timedelta(days=2), at=now),
                f"shipment-{shipment_id}")
            await feed.redeliver(message)
        return await self.wait(rma_id, lambda v: v["status"] == "SHIPPED_OUT", timeout=45)

    async def delivered(self, feed: ShippingFeed, view: dict[str, Any]) -> dict[str, Any]:
        """The carrier's tracking, as shipping normalises it: in transit, then delivered."""
        s = view["shipment"]
        now = datetime.now(UTC)
        for status, carrier_status in ((ship.TrackingStatus.IN_TRANSIT, "配送中"),
                                       (ship.TrackingStatus.DELIVERED, "已送達")):
            message = await feed.publish(ship.ShipmentStatusChanged(
                shipment_id=s["shipment_id"], rma_id=view["rma_id"], tracking_number=s["tracking_number"],
                status=status, carrier_status=carrier_status, location="臺北市", occurred_at=now, at=now),
                f"shipment-{s['shipment_id']}-carrier")
            now += timedelta(hours=5)
        await feed.redeliver(message)  # the delivery reported twice
        return await self.wait(view["rma_id"], lambda v: v["status"] == "CLOSED")


@pytest.fixture
async def api(stack: Any) -> AsyncIterator[RmaApi]:
    async with httpx.AsyncClient(timeout=15, auth=stack.auth) as http:
        yield RmaApi(stack, http)


async def rma_events(stack: Any, rma_id: str) -> list[str]:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        rows = await conn.fetch("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version",
                                f"rma-{rma_id}")
        return [r["event_type"] for r in rows]
    finally:
        await conn.close()


# --- intake and warranty ----------------------------------------------------------------------------------
async def test_a_bad_fault_code_is_422_naming_the_field_and_listing_the_codes_and_stores_nothing(
        api: RmaApi, stack: Any) -> None:
    skus = await api.catalogue()
    serial = uid("SN")
    customer = uid("cust")
    body = {"serial": serial, "sku": skus["new"], "fault_code": "BTN_L_DBL", "contact": {"customer_id": customer},
            "ship_to": {"name": "W", "line1": "x", "city": "臺北市"}}
    r = await api.post("/rmas", body, {"X-Actor": customer, "X-Role": "customer"})
    assert r.status_code == 422, r.text
    [field] = r.json()["error"]["details"]["fields"]
    assert field["field"] == "fault_code"
    faults = (await api.get("/faults"))["faults"]
    assert all(f["code"] in field["rule"] for f in faults)
    missing = {k: v for k, v in body.items() if k != "fault_code"}
    r = await api.post("/rmas", missing, {"X-Actor": customer, "X-Role": "customer"})
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "fault_code"
    r = await api.post("/rmas", {**body, "fault_code": "left_button.no_response", "sku": "NO-SUCH-SKU"},
                       {"X-Actor": customer, "X-Role": "customer"})
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "sku"
    r = await api.post("/rmas", {**body, "fault_code": "left_button.no_response"},
                       {"X-Actor": "someone-else", "X-Role": "customer"})
    assert r.status_code == 403
    assert (await api.get("/rmas", serial=serial))["items"] == []
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM events WHERE stream_id LIKE 'rma-%' AND data->>'serial' = $1", serial)
    finally:
        await conn.close()
    assert stored == 0


async def test_warranty_eligible_at_day_365_rejected_at_day_366_and_no_proof_waits_for_a_reconciler(
        api: RmaApi) -> None:
    skus = await api.catalogue()
    day365 = await api.eligible(skus["new"], bought_days_ago=365)
    basis = day365["warranty"]["basis"]
    assert basis["source"] == "sales_record" and basis["warranty_days"] == 365
    assert basis["expires_on"] == basis["checked_on"]  # the last day covered

    serial = uid("SN")
    today = datetime.now(TAIPEI).date()
    await api.ok("/warranty/registrations", {"serial": serial, "sku": skus["new"], "customer_id": "c-366",
                                             "purchase_date": (today - timedelta(days=366)).isoformat()},
                 {"X-Actor": "c-366", "X-Role": "customer"})
    day366 = await api.open(serial, skus["new"])
    assert day366["status"] == "REJECTED" and day366["allowed_commands"] == []
    assert day366["warranty"]["basis"]["source"] == "registration"
    assert "day 366 of a 365-day warranty" in day366["warranty"]["rejection_reason"]

    unproven = await api.open(uid("SN"), skus["new"])
    assert (unproven["status"], unproven["stage"]) == ("RECEIVED", "awaiting_review")
    assert unproven["allowed_commands"] == ["cancel", "review"]
    assert "no proof of purchase" in unproven["warranty"]["review_reason"]
    rid = unproven["rma_id"]
    r = await api.post(f"/rmas/{rid}/review", {"decision": "eligible", "note": "invoice photo"}, STAFF)
    assert r.status_code == 403  # only a reconciler reviews
    reviewed = await api.ok(f"/rmas/{rid}/review", {"decision": "eligible", "note": "paper invoice #A-77 seen",
                                                    "purchase_date": (today - timedelta(days=30)).isoformat()},
                            RECONCILER)
    assert reviewed["status"] == "ELIGIBLE"
    b = reviewed["warranty"]["basis"]
    assert (b["source"], b["reviewer"], b["reference"]) == ("manual_review", "rec-1", "paper invoice #A-77 seen")
    view = await api.get(f"/rmas/{rid}")
    assert [(h["event_type"], h["actor"], h["role"]) for h in view["history"] if h["stream_id"] == f"rma-{rid}"] == [
        ("RmaOpened", unproven["contact"]["customer_id"], "customer"),
        ("RmaWarrantyReviewRequired", unproven["contact"]["customer_id"], "customer"),
        ("RmaEligible", "rec-1", "reconciler")]
    rejected = await api.open(uid("SN"), skus["new"])
    out = await api.ok(f"/rmas/{rejected['rma_id']}/review", {"decision": "rejected", "note": "no document"},
                       RECONCILER)
    assert out["status"] == "REJECTED" and out["warranty"]["basis"]["source"] == "manual_review"


async def test_a_refused_transition_is_409_naming_the_state_and_the_allowed_commands(api: RmaApi,
                                                                                        stack: Any) -> None:
    skus = await api.catalogue()
    view = await api.eligible(skus["new"])
    rid = view["rma_id"]
    before = await rma_events(stack, rid)
    r = await api.post(f"/rmas/{rid}/start-processing", {}, STAFF)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_transition"
    assert err["details"]["current_state"] == "ELIGIBLE"
    assert err["details"]["allowed_commands"] == ["cancel", "receive_parcel"]
    r = await api.post(f"/rmas/{rid}/substitution/approve", {}, APPROVER)
    assert r.status_code == 409 and r.json()["error"]["details"]["command"] == "approve_substitution"
    # A second RMA for a unit that already has an open one is refused too.
    r = await api.post("/rmas", {"serial": view["serial"], "sku": view["sku"], "fault_code": "wheel.skipping",
                                 "contact": view["contact"], "ship_to": view["ship_to"]}, STAFF)
    assert r.status_code == 409 and r.json()["error"]["details"]["rma_id"] == rid
    assert await rma_events(stack, rid) == before  # nothing stored
    cancelled = await api.ok(f"/rmas/{rid}/cancel", {"reason": "found the receipt of another shop"}, STAFF)
    assert cancelled["status"] == "CANCELLED" and cancelled["allowed_commands"] == []
    r = await api.post(f"/rmas/{rid}/cancel", {"reason": "again"}, STAFF)
    assert r.status_code == 409 and r.json()["error"]["details"]["allowed_commands"] == []


# --- the flow ------------------------------------------------------------------------------------------------
async def test_eol_substitution_with_approval_then_shipped_delivered_closed_and_the_replacement_failing_again(
        api: RmaApi, feed: ShippingFeed, stack: Any) -> None:
    skus = await api.catalogue()
    home = f"{CENTRE}-{skus['run']}"
    await api.put(f"/stock/{home}/{skus['pro']}", {"available": 1, "reason": "stock take"})
    view = await api.eligible(skus["old"], warehouse=home)
    rid = view["rma_id"]
    customer = view["contact"]["customer_id"]

    view = await api.shipped_in(feed, rid)
    processing = await api.ok(f"/rmas/{rid}/start-processing", {}, STAFF)
    assert (processing["status"], processing["stage"]) == ("PROCESSING", "awaiting_approval")
    assert processing["allowed_commands"] == ["approve_substitution", "refuse_substitution"]
    d = processing["replacement"]["decision"]
    assert (d["sku"], d["needs_approval"], d["same_sku"], d["source"]) == (skus["pro"], True, False, "local")
    fate = {c["sku"]: (c["status"], c["feature_score"], c["price_delta"]["amount"]) for c in d["candidates"]}
    assert fate == {skus["old"]: ("end_of_life", None, 0), skus["pro"]: ("chosen", 95, 40000),
                    skus["new"]: ("ranked", 80, 0)}
    assert "over the approval threshold" in d["explanation"]

    r = await api.post(f"/rmas/{rid}/substitution/approve", {"reason": "ok"}, STAFF)
    assert r.status_code == 403
    ready = await api.ok(f"/rmas/{rid}/substitution/approve", {"reason": "customer keeps the better model"},
                         APPROVER)
    assert (ready["status"], ready["stage"]) == ("PROCESSING", "ready")
    rep = ready["replacement"]
    assert (rep["sku"], rep["serial"], rep["warehouse_id"]) == (skus["pro"], f"RPL-{rid}", home)
    assert (await api.get("/stock", warehouse=home, sku=skus["pro"]))["items"][0]["available"] == 0

    shipped = await api.shipped_out(feed, ready)
    assert shipped["shipment"]["tracking_number"]
    closed = await api.delivered(feed, shipped)
    assert closed["closed"]["resolution"] == "replacement_delivered"
    assert closed["tracking"]["status"] == "Delivered" and closed["shipment"]["status"] == "Delivered"
    events = await rma_events(stack, rid)
    for once in ("RmaShippedIn", "RmaReplacementReady", "RmaShippedOut", "RmaClosed"):
        assert events.count(once) == 1, events  # redeliveries changed nothing
    actors = {(h["event_type"], h["actor"]) for h in closed["history"]}
    assert {("RmaOpened", customer), ("RmaProcessingStarted", "tech-1"), ("RmaSubstitutionApproved", "boss-1"),
            ("RmaShippedIn", "rma"), ("RmaClosed", "rma")} <= actors

    # A year later the replacement fails: flagged as a repeat of this RMA, covered from the day it shipped.
    again = await api.open(rep["serial"], skus["pro"], customer=customer, fault_code="left_button.intermittent")
    assert again["status"] == "ELIGIBLE"
    assert again["warranty"]["basis"]["reference"] == f"replacement of RMA {rid}"
    flag = again["repeat_failure"]
    assert (flag["kind"], flag["previous_rma_id"], flag["earlier_rma_ids"]) == ("replacement_unit", rid, [rid])
    repeats = await api.get("/quality/repeat-failures", sku=skus["pro"])
    assert [i["rma_id"] for i in repeats["items"]] == [again["rma_id"]]
    counts = await api.get("/quality/fault-counts", sku=skus["pro"])
    assert [(c["fault_code"], c["rmas"], c["repeats"], c["component"]) for c in counts["counts"]] == [
        ("left_button.intermittent", 1, 1, "left_button")]
    by_serial = await api.get("/rmas", serial=rep["serial"])  # the replacement's serial finds both RMAs
    assert {i["rma_id"] for i in by_serial["items"]} == {rid, again["rma_id"]}


async def test_a_refused_substitution_takes_the_approvers_alternative(api: RmaApi, feed: ShippingFeed) -> None:
    skus = await api.catalogue()
    home = f"{CENTRE}-{skus['run']}"
    await api.put(f"/stock/{home}/{skus['pro']}", {"available": 2})
    await api.put(f"/stock/{home}/{skus['alt']}", {"available": 1})
    view = await api.eligible(skus["old"], warehouse=home)
    await api.shipped_in(feed, view["rma_id"])
    waiting = await api.ok(f"/rmas/{view['rma_id']}/start-processing", {}, STAFF)
    assert waiting["stage"] == "awaiting_approval"
    r = await api.post(f"/rmas/{view['rma_id']}/substitution/refuse", {"alternative_sku": "NOPE-1", "reason": "x"},
                       APPROVER)
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "alternative_sku"
    ready = await api.ok(f"/rmas/{view['rma_id']}/substitution/refuse",
                         {"alternative_sku": skus["alt"], "reason": "over budget this quarter"}, APPROVER)
    d = ready["replacement"]["decision"]
    assert (ready["stage"], d["sku"], d["chosen_by"], d["needs_approval"]) == ("ready", skus["alt"], "approver", False)
    assert {c["sku"]: c["status"] for c in d["candidates"]}[skus["pro"]] == "refused_by_approver"
    assert ready["replacement"]["refused_skus"] == [skus["pro"]]


async def test_no_local_stock_requests_a_transfer_refused_goes_to_the_next_source_accepted_is_ready(
        api: RmaApi, feed: ShippingFeed) -> None:
    skus = await api.catalogue()
    home, a, b = (f"{w}-{skus['run']}" for w in (CENTRE, DEPT_A, DEPT_B))
    await api.put(f"/stock/{a}/{skus['new']}", {"available": 3})
    await api.put(f"/stock/{b}/{skus['new']}", {"available": 1})
    view = await api.eligible(skus["old"], warehouse=home)
    rid = view["rma_id"]
    await api.shipped_in(feed, rid)
    waiting = await api.ok(f"/rmas/{rid}/start-processing", {}, STAFF)
    assert waiting["stage"] == "awaiting_transfer" and waiting["replacement"]["decision"]["warehouse_id"] == a
    first = (await api.get(f"/rmas/{rid}"))["transfer"]
    assert (first["from_warehouse"], first["to_warehouse"], first["status"]) == (a, home, "REQUESTED")
    refused = await api.ok(f"/transfers/{first['transfer_id']}/refuse", {"reason": "reserved for a shop order"}, STAFF)
    assert refused["transfer"]["status"] == "REFUSED"
    assert refused["rma"]["stage"] == "awaiting_transfer"
    second = (await api.get(f"/rmas/{rid}"))["transfer"]
    assert second["from_warehouse"] == b and second["transfer_id"] != first["transfer_id"]
    r = await api.post(f"/transfers/{first['transfer_id']}/accept", {}, STAFF)
    assert r.status_code == 409  # a refused transfer cannot be accepted afterwards
    accepted = await api.ok(f"/transfers/{second['transfer_id']}/accept", {"note": "sent by courier"}, STAFF)
    assert accepted["transfer"]["status"] == "ACCEPTED"
    assert (accepted["rma"]["stage"], accepted["rma"]["replacement"]["sku"]) == ("ready", skus["new"])
    levels = {(i["warehouse_id"]): i["available"] for i in (await api.get("/stock", sku=skus["new"]))["items"]}
    assert levels == {a: 3, b: 0, home: 0}  # moved from b to home, then reserved for the RMA


async def test_an_unanswered_transfer_escalates_at_its_ttl_and_can_still_be_accepted(api: RmaApi,
                                                                                      feed: ShippingFeed) -> None:
    skus = await api.catalogue()
    home, dept = f"{CENTRE}-{skus['run']}", f"{DEPT_A}-{skus['run']}"
    await api.put(f"/warehouses/{dept}", {"name": "零售部", "kind": "department", "transfer_ttl_seconds": 2})
    await api.put(f"/stock/{dept}/{skus['new']}", {"available": 1})
    view = await api.eligible(skus["old"], warehouse=home)
    await api.shipped_in(feed, view["rma_id"])
    waiting = await api.ok(f"/rmas/{view['rma_id']}/start-processing", {}, STAFF)
    transfer = (await api.get(f"/rmas/{view['rma_id']}"))["transfer"]
    requested = datetime.fromisoformat(transfer["requested_at"])
    assert datetime.fromisoformat(transfer["expires_at"]) - requested == timedelta(seconds=2)
    assert waiting["stage"] == "awaiting_transfer"
    deadline = time.monotonic() + 20
    while (t := await api.get(f"/transfers/{transfer['transfer_id']}"))["status"] != "ESCALATED":
        assert time.monotonic() < deadline, f"never escalated: {t}"
        await asyncio.sleep(0.2)
    assert datetime.fromisoformat(t["escalated_at"]) >= datetime.fromisoformat(t["expires_at"])
    escalated = await api.get("/transfers", status="ESCALATED", warehouse=dept)
    assert [i["transfer_id"] for i in escalated["items"]] == [transfer["transfer_id"]]
    history = (await api.get(f"/rmas/{view['rma_id']}"))["history"]
    assert [h["actor"] for h in history if h["event_type"] == "StockTransferEscalated"] == ["transfer-ttl-timer"]
    accepted = await api.ok(f"/transfers/{transfer['transfer_id']}/accept", {"note": "sorry, found it"}, STAFF)
    assert accepted["rma"]["stage"] == "ready"


async def test_list_by_customer_and_status_with_keyset_paging(api: RmaApi) -> None:
    skus = await api.catalogue()
    customer = uid("cust")
    ids = [(await api.eligible(skus["new"], customer=customer))["rma_id"] for _ in range(3)]
    page1 = await api.get("/rmas", customer=customer, limit=2)
    page2 = await api.get("/rmas", customer=customer, limit=2, cursor=page1["next_cursor"])
    assert [i["rma_id"] for i in page1["items"] + page2["items"]] == list(reversed(ids))
    assert page2["next_cursor"] is None
    await api.ok(f"/rmas/{ids[0]}/cancel", {"reason": "sorted out"}, {"X-Actor": customer, "X-Role": "customer"})
    cancelled = await api.get("/rmas", customer=customer, status="CANCELLED")
    assert [i["rma_id"] for i in cancelled["items"]] == [ids[0]]
    r = await api.http.get(f"{api.url}/rmas", params={"cursor": "garbage"})
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "cursor"


async def test_shipment_facts_repeated_or_duplicated_change_nothing(api: RmaApi, feed: ShippingFeed,
                                                                    stack: Any) -> None:
    """The same shipment reported again (a new event id: shipping re-published it) changes nothing; a
    second, different shipment for an RMA already shipped out is refused, visibly (shipping's duplicate
    follow-up owns it), and the RMA keeps its one shipment."""
    skus = await api.catalogue()
    home = f"{CENTRE}-{skus['run']}"
    await api.put(f"/stock/{home}/{skus['new']}", {"available": 1})
    view = await api.eligible(skus["old"], warehouse=home)
    rid = view["rma_id"]
    await api.shipped_in(feed, rid)
    ready = await api.ok(f"/rmas/{rid}/start-processing", {}, STAFF)
    assert ready["stage"] == "ready" and ready["replacement"]["decision"]["needs_approval"] is False
    shipped = await api.shipped_out(feed, ready)
    before = await rma_events(stack, rid)
    refused_before = (await api.get("/readyz"))["shipping_events_refused"]
    now = datetime.now(UTC)
    s = shipped["shipment"]
    common = {"rma_id": rid, "action": "ship_replacement", "sku": skus["new"], "warehouse_id": home,
              "carrier": s["carrier"], "ship_to": ShippingAddress.model_validate(view["ship_to"]), "at": now}
    await feed.publish(ship.ShipmentCreated(shipment_id=s["shipment_id"], tracking_number=s["tracking_number"],
                                            **common), f"shipment-{s['shipment_id']}-again")
    other = uid("shp")
    await feed.publish(ship.ShipmentCreated(shipment_id=other, tracking_number="DUP123", **common), f"shipment-{other}")
    deadline = time.monotonic() + 20
    while (await api.get("/readyz"))["shipping_events_refused"] < refused_before + 1:
        assert time.monotonic() < deadline, "the second shipment was never looked at"
        await asyncio.sleep(0.1)
    after = await api.get(f"/rmas/{rid}")
    assert after["status"] == "SHIPPED_OUT" and after["shipment"]["shipment_id"] == s["shipment_id"]
    assert await rma_events(stack, rid) == before


async def test_replacement_demand_of_an_eol_sku_against_its_substitutes_stock(api: RmaApi) -> None:
    """Case 13: units still in warranty x the failure rate = the RMAs to come; the substitutes' stock
    is what can serve an end-of-life SKU."""
    skus = await api.catalogue()
    today = datetime.now(TAIPEI).date()
    for days_ago in (10, 100, 364, 365, 366, 700):  # 4 still covered (day 365 is the last), 2 not
        await api.ok("/sales-records", {"serial": uid("SN"), "sku": skus["old"], "invoice_number": uid("INV"),
                                        "sold_on": (today - timedelta(days=days_ago)).isoformat()}, STAFF)
    await api.put(f"/stock/{CENTRE}-{skus['run']}/{skus['old']}", {"available": 9})  # EOL: never the replacement
    await api.put(f"/stock/{CENTRE}-{skus['run']}/{skus['new']}", {"available": 1})
    demand = await api.get("/quality/replacement-demand", sku=skus["old"], failure_rate=0.5)
    assert (demand["units_in_field"], demand["units_in_warranty"], demand["expected_rmas"]) == (6, 4, 2)
    assert demand["substitute_stock"] == {skus["new"]: 1, skus["pro"]: 0}
    assert (demand["supply"], demand["shortfall"], demand["failure_rate_source"]) == (1, 1, "given")
    observed = await api.get("/quality/replacement-demand", sku=skus["old"])
    assert (observed["failure_rate"], observed["expected_rmas"]) == (0.0, 0)


async def test_concurrent_commands_never_take_the_last_unit_twice_nor_open_a_serial_twice(
        api: RmaApi, feed: ShippingFeed) -> None:
    skus = await api.catalogue()
    home = f"{CENTRE}-{skus['run']}"
    await api.put(f"/stock/{home}/{skus['new']}", {"available": 1})
    rmas = [await api.eligible(skus["old"], warehouse=home) for _ in range(2)]
    for v in rmas:
        await api.shipped_in(feed, v["rma_id"])
    results = await asyncio.gather(*(api.ok(f"/rmas/{v['rma_id']}/start-processing", {}, STAFF) for v in rmas))
    assert sorted(r["stage"] for r in results) == ["ready", "unavailable"]  # one unit, one replacement
    assert (await api.get("/stock", warehouse=home, sku=skus["new"]))["items"][0]["available"] == 0
    waiting = next(r for r in results if r["stage"] == "unavailable")
    assert waiting["allowed_commands"] == ["retry_replacement"]
    await api.put(f"/stock/{home}/{skus['new']}", {"available": 1, "reason": "goods receipt"})
    retried = await api.ok(f"/rmas/{waiting['rma_id']}/replacement/retry", {}, STAFF)
    assert retried["stage"] == "ready"

    serial = uid("SN")
    today = datetime.now(TAIPEI).date()
    await api.ok("/sales-records", {"serial": serial, "sku": skus["new"], "invoice_number": uid("INV"),
                                    "sold_on": today.isoformat()}, STAFF)
    body = {"serial": serial, "sku": skus["new"], "fault_code": "sensor.tracking", "contact": {"customer_id": "c-1"},
            "ship_to": {"name": "W", "line1": "x", "city": "臺北市"}}
    responses = await asyncio.gather(*(api.post("/rmas", body, STAFF) for _ in range(5)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409, 409]
    assert len((await api.get("/rmas", serial=serial))["items"]) == 1
    # A retried request with the same Idempotency-Key returns the first result and stores nothing more.
    key = {**STAFF, "Idempotency-Key": uid("idem")}
    serial2 = uid("SN")
    first = await api.post("/rmas", {**body, "serial": serial2}, key)
    again = await api.post("/rmas", {**body, "serial": serial2}, key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["rma_id"] == first.json()["rma_id"] and again.headers["Idempotent-Replayed"] == "true"
