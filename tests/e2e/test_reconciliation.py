"""The reconciliation and the projection rebuild through the running stack (issue 5, items 1 and 2).

A reconciliation replays the *whole* event store, so these tests run a stack of their own: every
service as its own process, exactly as `make run` starts them, on a fresh database of the session's
PostgreSQL and a Kafka-compatible broker of their own (the shared topics carry other stacks' events,
which this store never saw). The store is filled through the APIs: orders placed and paid by signed
Stripe webhooks, a bill settled below its prepayment (a refund to the card), a cancellation.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.auth.client import ActorAuth, ActorTokens
from libs.devstack.kafka import EmbeddedKafka
from libs.devstack.stripe import charge_succeeded
from libs.devstack.supervisor import SERVICES, Child
from services.payments.domain.signature import sign
from services.projector.projections.tables import CATEGORIES
from services.registry import PROJECTOR_EVENTS, TOPICS
from tests.e2e.conftest import start_child
from tests.e2e.test_order_flow import order_body
from tests.support.auth import TEST_SECRET_KEY, actor_auth, actor_tokens
from tests.support.wait import until

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "whsec_recon_" + uuid.uuid4().hex
TAIPEI = ZoneInfo("Asia/Taipei")


@dataclass
class Own:
    """A stack of its own: processes, database, broker, and a client that sends each identity's token."""

    children: dict[str, Child]
    env: dict[str, str]
    logs: Path
    dsn: str
    bootstrap: str
    tokens: ActorTokens
    auth: ActorAuth

    def url(self, name: str) -> str:
        return self.children[name].url


@pytest.fixture(scope="module")
def own(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    name = f"e2e_recon_{uuid.uuid4().hex[:10]}"

    async def create(sql: str) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(create(f"CREATE DATABASE {name}"))
    dsn = urlunsplit(urlsplit(pg_dsn)._replace(path=f"/{name}"))
    broker = EmbeddedKafka()
    broker.start()
    logs = tmp_path_factory.mktemp("recon-stack-logs")
    prefix = f"rc{uuid.uuid4().hex[:6]}-"
    env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
           "CLOSELOOP_ENVIRONMENT": "test", "CLOSELOOP_INSTANCE_PREFIX": prefix,
           "CLOSELOOP_RELAY_NAME": f"{prefix}relay", "PYTHONUNBUFFERED": "1", "CLOSELOOP_SECRET_KEY": TEST_SECRET_KEY,
           "CLOSELOOP_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET, "CLOSELOOP_RECONCILE_AT": "03:00"}
    children: dict[str, Child] = {}
    try:
        for service in SERVICES:
            children[service] = start_child(service, env, logs)
        tokens = actor_tokens(dsn)
        yield Own(children, env, logs, dsn, broker.bootstrap, tokens, actor_auth(tokens))
    finally:
        for child in reversed(list(children.values())):
            child.stop()
        broker.stop()
        asyncio.run(create(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def http(own: Own) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20, auth=own.auth) as client:
        yield client


def who(actor: str, role: str) -> dict[str, str]:
    return {"X-Actor": actor, "X-Role": role}


RECONCILER, APPROVER, PLATFORM = who("huber", "reconciler"), who("louis", "approver"), who("ops", "platform")


async def sql(own: Own, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(own.dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def stripe(http: httpx.AsyncClient, own: Own, event: dict[str, Any]) -> None:
    body = json.dumps(event).encode()
    r = await http.post(f"{own.url('payments')}/webhooks/stripe", content=body,
                        headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET, int(time.time())),
                                 "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


async def order_status(http: httpx.AsyncClient, own: Own, order_id: str) -> str | None:
    r = await http.get(f"{own.url('projector')}/orders/{order_id}", headers=PLATFORM)
    return r.json()["status"] if r.status_code == 200 else None


async def place_prepaid(http: httpx.AsyncClient, own: Own) -> tuple[str, str, int]:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    body = order_body(customer, f"s-{uuid.uuid4().hex[:8]}", hour=19)  # after dinner: prepaid
    r = await http.post(f"{own.url('orders')}/orders?wait=true", json=body,
                        headers={**who(customer, "customer"), "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.text
    placed = r.json()
    order_id, amount = placed["order_id"], placed["estimated_total"]["amount"]

    async def opened() -> bool:
        return bool(await sql(own, "SELECT 1 FROM events WHERE stream_id = $1", f"transaction-{order_id}"))

    await until("the payments service opened the transaction", opened)
    await stripe(http, own, charge_succeeded(order_id, amount=amount))

    async def prepaid() -> bool:
        return await order_status(http, own, order_id) == "awaiting_confirmation"

    await until(f"order {order_id} prepaid", prepaid)
    return order_id, customer, amount


async def settled_below_the_prepayment(http: httpx.AsyncClient, own: Own) -> str:
    """Accepted, started, billed below the prepayment, confirmed: the excess is refunded to the card."""
    order_id, customer, _ = await place_prepaid(http, own)
    merchant = f"m-{uuid.uuid4().hex[:8]}"
    m = who(merchant, "merchant")
    for step in ("accept", "start"):
        r = await http.post(f"{own.url('orders')}/orders/{order_id}/{step}", json={"merchant_id": merchant},
                            headers=m)
        assert r.status_code == 200, r.text
    r = await http.post(f"{own.url('orders')}/orders/{order_id}/bill", headers=m,
                        json={"merchant_id": merchant, "actual_minutes": 60, "materials": []})
    assert r.status_code == 200, r.text
    r = await http.post(f"{own.url('orders')}/orders/{order_id}/bill/confirm", headers=who(customer, "customer"),
                        json={"customer_id": customer, "revision": 1})
    assert r.status_code == 200, r.text

    async def completed() -> bool:
        return await order_status(http, own, order_id) == "completed"

    await until(f"order {order_id} settled", completed)
    return order_id


async def run(http: httpx.AsyncClient, own: Own, *, repair: bool = False) -> dict[str, Any]:
    r = await http.post(f"{own.url('projector')}/reconciliations", json={"repair": repair}, headers=RECONCILER)
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    phases: set[str] = set()

    async def done() -> dict[str, Any] | None:
        got = (await http.get(f"{own.url('projector')}/reconciliations/{run_id}", headers=RECONCILER)).json()
        phases.add(got["phase"])
        return got if got["status"] in ("completed", "failed") else None

    result = await until(f"reconciliation {run_id}", done, timeout=120)
    assert result["status"] == "completed", result.get("error")
    result["phases_seen"] = phases
    return result


async def end_offsets(own: Own) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=own.bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in TOPICS for p in (consumer.partitions_for_topic(t) or [])]
        ends = await consumer.end_offsets(parts)
        out: dict[str, int] = {}
        for tp, offset in ends.items():
            out[tp.topic] = out.get(tp.topic, 0) + offset
        return out
    finally:
        await consumer.stop()


async def projector_idle(own: Own) -> None:
    """Wait until the live projector has applied every event of the streams it reads (the version it
    recorded for each stream is the store's last) and the services have stopped reacting."""
    async def caught_up() -> bool:
        [row] = await sql(own, """
            SELECT count(*) AS behind FROM (
                SELECT stream_id, max(stream_version) AS v FROM events
                 WHERE split_part(stream_id, '-', 1) = ANY($1::text[]) GROUP BY stream_id) e
             LEFT JOIN projection_streams p USING (stream_id)
             WHERE p.version IS DISTINCT FROM e.v""", list(CATEGORIES))
        return row["behind"] == 0

    await until("the live projector caught up", caught_up, timeout=60)
    await asyncio.sleep(1.5)


# ------------------------------------------------------------------------------------------------ tests


async def test_a_reconciliation_over_http_finds_nothing_on_a_clean_stack_and_publishes_only_its_own_events(
        own: Own, http: httpx.AsyncClient) -> None:
    await settled_below_the_prepayment(http, own)
    await place_prepaid(http, own)
    await projector_idle(own)
    before_events = (await sql(own, "SELECT count(*) AS n FROM events"))[0]["n"]
    before = await end_offsets(own)

    result = await run(http, own)
    report = result["report"]
    assert report["totals"]["discrepancies"] == 0, [d["summary"] for d in report["discrepancies"]]
    assert report["store"]["events_replayed"] > 0 and {t["table"] for t in report["services"]} >= {
        "payments_refunds", "rma_cases", "shipping_shipments", "notifications"}
    assert set(report["phases"]) >= {"replaying", "indexing", "comparing", "ledger"}
    new = await sql(own, "SELECT stream_id FROM events ORDER BY global_position OFFSET $1", before_events)
    assert {r["stream_id"] for r in new} == {f"reconciliation-{result['run_id']}"}

    async def published() -> dict[str, int] | None:
        after = await end_offsets(own)
        return after if after.get(PROJECTOR_EVENTS, 0) >= before.get(PROJECTOR_EVENTS, 0) + 2 else None

    after = await until("the reconciliation's own events published", published)
    changed = {t for t in TOPICS if after.get(t, 0) != before.get(t, 0)}
    assert changed == {PROJECTOR_EVENTS}
    listed = (await http.get(f"{own.url('projector')}/reconciliations", headers=RECONCILER)).json()
    assert listed[0]["run_id"] == result["run_id"] and listed[0]["status"] == "completed"


async def test_a_planted_drift_is_reported_with_its_row_and_events_then_repaired_and_worked_through(
        own: Own, http: httpx.AsyncClient) -> None:
    order_id = await settled_below_the_prepayment(http, own)
    await projector_idle(own)
    await sql(own, "UPDATE rm_orders SET status = 'cancelled', status_label = '已取消' WHERE order_id = $1", order_id)
    assert await order_status(http, own, order_id) == "cancelled"  # the live read model lies

    result = await run(http, own, repair=True)
    report = result["report"]
    [drift] = [d for d in report["discrepancies"] if d["key"] == f"rm_orders:{order_id}"]
    assert drift["kind"] == "read_model_drift" and drift["details"]["columns"] == ["status", "status_label"]
    assert drift["details"]["live"]["status"] == "cancelled" and drift["details"]["replayed"]["status"] == "completed"
    stored = await sql(own, "SELECT stream_version, global_position FROM events WHERE stream_id = $1"
                            " ORDER BY stream_version", f"order-{order_id}")
    assert [(e["version"], e["position"]) for e in drift["details"]["events"]] == [tuple(r) for r in stored]
    assert report["repaired"] is not None and drift["details"]["repaired"] is True
    assert await order_status(http, own, order_id) == "completed"  # the swap put the truth back

    page = await http.get(f"{own.url('projector')}/reconciliations/{result['run_id']}.html", headers=RECONCILER)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'id="{drift["discrepancy_id"]}"' in page.text and result["report_sha256"] in page.text

    did = drift["discrepancy_id"]
    base = f"{own.url('projector')}/discrepancies/{did}"
    r = await http.post(f"{base}/resolve", json={"reason": "fixed"}, headers=RECONCILER)
    assert r.status_code == 403, r.text
    r = await http.post(f"{base}/acknowledge", json={"reason": "a hand edit, the swap repaired it"},
                        headers=RECONCILER)
    assert r.status_code == 200 and r.json()["status"] == "acknowledged", r.text
    r = await http.post(f"{base}/acknowledge", json={"reason": "again"}, headers=APPROVER)
    assert r.status_code == 409 and r.json()["error"]["details"]["allowed_commands"] == ["resolve"]
    r = await http.post(f"{base}/resolve", json={"reason": ""}, headers=APPROVER)
    assert r.status_code == 422
    r = await http.post(f"{base}/resolve", json={"reason": "repaired by the swap; no cause left"}, headers=APPROVER)
    assert r.status_code == 200 and (r.json()["status"], r.json()["resolved_by"]) == ("resolved", "louis")
    history = (await http.get(base, headers=RECONCILER)).json()["history"]
    assert [(h["event_type"], h["actor"], h["role"]) for h in history] == [
        ("DiscrepancyOpened", "huber", "reconciler"), ("DiscrepancyAcknowledged", "huber", "reconciler"),
        ("DiscrepancyResolved", "louis", "approver")]

    again = await run(http, own)
    assert all(d["key"] != f"rm_orders:{order_id}" for d in again["report"]["discrepancies"])
    listed = (await http.get(f"{own.url('projector')}/discrepancies?status=resolved", headers=RECONCILER)).json()
    assert [d["discrepancy_id"] for d in listed] == [did] and listed[0]["present"] is False


async def test_a_rebuild_keeps_serving_reads_appends_nothing_publishes_nothing_and_shows_its_progress(
        own: Own, http: httpx.AsyncClient) -> None:
    orders = [await place_prepaid(http, own) for _ in range(3)]
    await projector_idle(own)
    before_events = (await sql(own, "SELECT count(*) AS n FROM events"))[0]["n"]
    before = await end_offsets(own)
    stop = asyncio.Event()
    answers: list[tuple[int, str | None]] = []

    async def reader() -> None:
        while not stop.is_set():
            for order_id, _, _ in orders:
                r = await http.get(f"{own.url('projector')}/orders/{order_id}", headers=PLATFORM)
                answers.append((r.status_code, r.json().get("status")))

    readers = [asyncio.create_task(reader()) for _ in range(2)]
    r = await http.post(f"{own.url('projector')}/rebuilds", headers=PLATFORM)
    assert r.status_code == 202, r.text
    status_url = own.url("projector") + r.json()["status_url"]
    seen: list[dict[str, Any]] = []

    async def swapped() -> dict[str, Any] | None:
        got = (await http.get(status_url, headers=PLATFORM)).json()
        seen.append(got)
        return got if got["status"] in ("swapped", "failed") else None

    done = await until("the rebuild swapped in", swapped, timeout=120)
    stop.set()
    await asyncio.gather(*readers)
    assert done["status"] == "swapped", done.get("error")
    progress = done["progress"]
    assert progress["applied"] == progress["total"] > 0 and progress["events_per_second"] > 0
    assert "swap_locked_ms" in progress and {"replaying", "indexing"} <= set(progress["phase_seconds"])
    assert answers and all(a == (200, "awaiting_confirmation") for a in answers), answers[:5]
    assert (await sql(own, "SELECT count(*) AS n FROM events"))[0]["n"] == before_events
    await asyncio.sleep(1)
    assert await end_offsets(own) == before
    # The live consumer goes on in the swapped-in tables.
    order_id, _, _ = await place_prepaid(http, own)
    assert await order_status(http, own, order_id) == "awaiting_confirmation"


async def test_the_daily_run_fires_at_the_configured_time(own: Own, http: httpx.AsyncClient) -> None:
    at = (datetime.now(TAIPEI) + timedelta(seconds=25)).replace(microsecond=0)
    old = own.children["projector"]
    old.stop()
    own.children["projector"] = start_child("projector", own.env, own.logs,
                                            CLOSELOOP_RECONCILE_AT=at.strftime("%H:%M:%S"))
    run_id = f"daily-{at.strftime('%Y%m%d')}"

    async def fired() -> dict[str, Any] | None:
        r = await http.get(f"{own.url('projector')}/reconciliations/{run_id}", headers=RECONCILER)
        return r.json() if r.status_code == 200 and r.json()["status"] == "completed" else None

    result = await until("the scheduled reconciliation", fired, timeout=120)
    assert (result["trigger"], result["requested_by"], result["requested_role"]) == (
        "schedule", "projector-scheduler", "service")
    assert datetime.fromisoformat(result["started_at"]) >= at - timedelta(seconds=1)
    [timer] = await sql(own, "SELECT due_at FROM timers WHERE kind = 'daily_reconciliation'")
    assert timer["due_at"] == at + timedelta(days=1)
