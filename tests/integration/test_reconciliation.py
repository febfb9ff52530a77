"""The daily reconciliation and the projection rebuild (issue 5, items 1 and 2) on the real PostgreSQL.

Every test works in a database of its own (created on the session's PostgreSQL, migrated like the
services do), because a reconciliation replays the *whole* store: its findings must be exactly what
the test planted. The store is filled by `closeloop dev seed`'s generator (every event from the
services' own domains: orders, bills, transactions, the provider's charges, RMAs, shipments and
their tracking) or by the domain objects directly; the live read models are written by the
projector's own consumer code (ids claimed and effects in one transaction), as Kafka delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

import services
from libs.application.timers import TimerRunner
from libs.application.unit_of_work import CommandContext
from libs.cli.seed import Seeder, batches
from libs.domain.aggregate import Aggregate
from libs.domain.errors import InvalidTransition
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from libs.eventstore import NO_STREAM, EventStore, Metadata, NewEvent
from libs.eventstore.migrate import EVENTSTORE_MIGRATIONS, migrate
from libs.messaging.consumer import EnvelopeBatchConsumer
from services.orders.domain.events import FaultParty
from services.payments.domain.events import RefundSource, Tender, TenderKind
from services.payments.domain.refund import RefundExecution
from services.payments.domain.transaction import Transaction
from services.payments.domain.upstream_events import (
    OrderRef,
    ProviderAmount,
    ReceivedVia,
    UpstreamChargeSucceeded,
    UpstreamDisputeClosed,
    UpstreamEventReceived,
    UpstreamFact,
    UpstreamRefundUpdated,
)
from services.projector.application.compare import differing_keys
from services.projector.application.rebuilds import Rebuilds
from services.projector.application.reconciliation import Reconciler, canonical
from services.projector.application.schedule import TIMER_KIND, DailyReconciliation
from services.projector.domain.reconciliation import Forbidden
from services.projector.projections.facts import FactsProjection
from services.projector.projections.orders import OrdersProjection
from services.projector.projections.tables import OWNED
from services.projector.shadow import ShadowBuild, live_apply
from services.rma.domain.events import ShippingAddress
from services.shipping.application.projections import project_shipment
from services.shipping.domain.events import CarrierManifestImported, ManifestShipmentRow, ShipmentCreated
from services.shipping.domain.shipment import Shipment
from tests.integration.helpers import fake_records
from tests.support.databases import fresh_database
from tests.unit.payments import POLICY

pytestmark = pytest.mark.integration

ROOT = services.__path__[0]
# Payments and shipping too: their tables mirror facts the reconciliation replays (rma and
# notifications are left out here, so that their tables, which the generator does not fill, are not compared).
COMPONENTS = {"eventstore": EVENTSTORE_MIGRATIONS,
              **{name: Path(ROOT) / name / "migrations" for name in ("projector", "payments", "shipping")}}
RECONCILER = CommandContext(actor="huber", role="reconciler", correlation_id="it-recon")
APPROVER = CommandContext(actor="louis", role="approver", correlation_id="it-recon")
META = Metadata(actor="it", role="service", correlation_id="it-recon")


@dataclass
class Db:
    dsn: str
    store: EventStore

    async def count(self, sql: str, *args: Any) -> int:
        return int(await self.store.pool.fetchval(sql, *args))


@pytest.fixture(scope="module")
async def new_db(pg_dsn: str) -> AsyncIterator[Callable[[], Awaitable[Db]]]:
    async with contextlib.AsyncExitStack() as stack:
        async def make() -> Db:
            dsn = await stack.enter_async_context(fresh_database(pg_dsn, "it_recon"))
            store = await EventStore.connect(dsn, max_size=12)
            stack.push_async_callback(store.close)  # closed before its database is dropped
            async with store.pool.acquire() as conn:
                await migrate(conn, COMPONENTS)
            return Db(dsn, store)

        yield make


# ------------------------------------------------------------------------------------------ helpers


async def seed(db: Db, events: int, *, seed_no: int = 5) -> None:
    """Realistic streams of every service, appended case by case as the services would."""
    for streams, _ in batches(Seeder(seed=seed_no), events, 500):
        await db.store.append_many([(sid, NO_STREAM, evs) for sid, evs in streams])


def live_consumer(db: Db) -> EnvelopeBatchConsumer:
    """The projector's live consumer (every projection, SWAP_LOCK shared) on the public read models."""
    return EnvelopeBatchConsumer(db.store.pool, "it-recon.projector.orders",
                                 functools.partial(live_apply, OrdersProjection(db.store), FactsProjection(db.store)),
                                 check_events=False)


async def project_live(db: Db, consumer: EnvelopeBatchConsumer | None = None, *, after: int = 0,
                       rng: random.Random | None = None) -> None:
    """Deliver every event after global position `after` to the live consumer, in batches (per stream
    in order, streams interleaved), as the relay and Kafka would."""
    consumer = consumer or live_consumer(db)
    events = [e for e in await db.store.read_all(limit=1_000_000) if e.global_position > after]
    size = (rng or random.Random(1)).randint(50, 300)
    for i in range(0, len(events), size):
        await consumer.process_records(fake_records(events[i:i + size]))


async def mirror_shipping(db: Db) -> None:
    """shipping_shipments as the shipping service writes it (its own projection code), for every shipment."""
    sids = [r[0] for r in await db.store.pool.fetch(
        "SELECT DISTINCT stream_id FROM events WHERE stream_id LIKE 'shipment-%'")]
    streams = await db.store.read_streams(sids)
    from libs.domain.events import registry

    async with db.store.transaction() as conn:
        for sid, evs in streams.items():
            s = Shipment.rehydrate(sid.split("-", 1)[1], [registry.decode(e.event_type, e.schema_version, e.data)
                                                           for e in evs])
            await project_shipment(conn, s, evs[-1].recorded_at)


async def populated(db: Db, events: int) -> None:
    """A store of realistic streams with the projector's and shipping's read models written from it."""
    await seed(db, events)
    await project_live(db)
    await mirror_shipping(db)


def by_key(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["key"]): d for d in report["discrepancies"]}


async def reconcile(db: Db, *, repair: bool = False, ctx: CommandContext = RECONCILER) -> dict[str, Any]:
    return await Reconciler(db.store).reconcile(ctx, trigger="cli", repair=repair)


def new(agg: Aggregate) -> list[NewEvent]:
    out = [NewEvent(e.event_type, e.to_data(), META, e.schema_version) for e in agg.pending]
    agg.mark_saved()
    return out


def events_of(*items: DomainEvent) -> list[NewEvent]:
    return [NewEvent(e.event_type, e.to_data(), META, e.schema_version) for e in items]


async def append(db: Db, stream_id: str, events: list[NewEvent]) -> None:
    await db.store.append(stream_id, None, events)


T = datetime(2025, 3, 10, 9, 0, tzinfo=ZoneInfo("Asia/Taipei"))


async def provider_says(db: Db, fact: UpstreamFact) -> str:
    """A provider event as the payments service stores it: the raw event, then its normalised fact."""
    sid = f"upstream-stripe-{fact.provider_event_id}"
    raw = UpstreamEventReceived(provider="stripe", provider_event_id=fact.provider_event_id, type=fact.upstream_type,
                                known=True, created=fact.occurred_at, livemode=False,
                                payload={"id": fact.provider_event_id, "type": fact.upstream_type},
                                received_via=ReceivedVia.WEBHOOK, signature_verified=True, received_at=T)
    await append(db, sid, events_of(raw, fact))
    return sid


def charge(evt: str, order_id: str | None, intent: str, amount: int, currency: str = "TWD",
           metadata: dict[str, str] | None = None) -> UpstreamChargeSucceeded:
    return UpstreamChargeSucceeded(
        provider_event_id=evt, upstream_type="payment_intent.succeeded",
        order_ref=OrderRef(order_id=order_id, payment_intent_id=intent, charge_id="ch_" + intent[3:]),
        occurred_at=T, source="payment_intent", payment_intent_id=intent, charge_id="ch_" + intent[3:],
        amount=Money(amount=amount, currency=currency), provider_amount=ProviderAmount(amount=amount,
                                                                                       currency=currency.lower()),
        metadata=metadata or {})


async def captured(db: Db, order_id: str, tenders: list[Tender]) -> Transaction:
    tx = Transaction.open(order_id, customer_id="c-1", placed_at=T, estimated_total=Money(
        amount=sum(t.amount.amount for t in tenders), currency=tenders[0].amount.currency),
        policy_version=POLICY.version, at=T, merchant_id="m-1", prepayment_bill_id=f"bp-{order_id}",
        payment_deadline=T + timedelta(minutes=15))
    tx.capture_prepayment(tenders, at=T + timedelta(minutes=1))
    await append(db, tx.stream_id, new(tx))
    return tx


def card(amount: int, ref: str, currency: str = "TWD") -> Tender:
    return Tender(kind=TenderKind.THIRD_PARTY, amount=Money(amount=amount, currency=currency), reference=ref)


# ------------------------------------------------------------------------------------------ tests


async def test_a_clean_store_reconciles_with_nothing_found_and_only_its_own_events_are_appended(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await seed(db, 3000)
    await project_live(db)
    await mirror_shipping(db)
    before = await db.count("SELECT count(*) FROM events")
    report = await reconcile(db)
    assert report["totals"] == {"discrepancies": 0, "new": 0, "by_kind": {}, "by_category": {}}, \
        [d["summary"] for d in report["discrepancies"]][:5]
    # The store as the run saw it: everything, and its own ReconciliationStarted.
    assert report["store"]["events"] == before + 1 and report["store"]["events_replayed"] > 2000
    assert all(t["live"] == t["replayed"] > 0 for t in report["tables"]
               if t["table"] not in ("rm_refunds", "rm_manifest_rows", "rm_notifications"))
    assert {s["table"] for s in report["services"]} == {"payments_refunds", "shipping_shipments"}
    assert report["integrity"]["events_checked"] == before + 1
    # What the run appended: its own two events, nothing else (the replay writes only its schema).
    after = await db.store.pool.fetch("SELECT stream_id, event_type FROM events WHERE global_position > $1"
                                      " ORDER BY global_position", before)
    assert [tuple(r) for r in after] == [(f"reconciliation-{report['run_id']}", "ReconciliationStarted"),
                                         (f"reconciliation-{report['run_id']}", "ReconciliationCompleted")]
    assert await db.count("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'recon_%'") == 0


async def test_a_drift_planted_in_a_live_read_model_is_found_with_the_row_and_its_event_positions_and_repaired(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await seed(db, 2000)
    await project_live(db)
    await mirror_shipping(db)
    pool = db.store.pool
    order_id = await pool.fetchval("SELECT order_id FROM rm_orders WHERE status = 'completed' ORDER BY order_id"
                                   " LIMIT 1")
    await pool.execute("UPDATE rm_orders SET status = 'cancelled' WHERE order_id = $1", order_id)
    gone = await pool.fetchrow("SELECT event_id, stream_id, global_position FROM rm_order_history"
                               " ORDER BY global_position DESC LIMIT 1")
    await pool.execute("DELETE FROM rm_order_history WHERE event_id = $1", gone["event_id"])
    tx_order = await pool.fetchval("SELECT order_id FROM rm_transactions ORDER BY order_id LIMIT 1")
    await pool.execute("UPDATE rm_transactions SET paid = paid + 1 WHERE order_id = $1", tx_order)
    shipment = await pool.fetchval("SELECT shipment_id FROM shipping_shipments ORDER BY shipment_id LIMIT 1")
    await pool.execute("UPDATE shipping_shipments SET status = 'Exception' WHERE shipment_id = $1", shipment)

    report = await reconcile(db)
    found = by_key(report)
    assert set(found) == {("read_model_drift", f"rm_orders:{order_id}"),
                          ("read_model_drift", f"rm_order_history:{gone['event_id']}"),
                          ("read_model_drift", f"rm_transactions:{tx_order}"),
                          ("service_drift", f"shipping_shipments:{shipment}")}
    drift = found[("read_model_drift", f"rm_orders:{order_id}")]["details"]
    assert drift["columns"] == ["status"] and (drift["live"]["status"], drift["replayed"]["status"]) == (
        "cancelled", "completed")
    stored = await db.store.read_stream(f"order-{order_id}")
    assert drift["stream_id"] == f"order-{order_id}"
    assert [(e["version"], e["position"], e["event_type"]) for e in drift["events"]] == [
        (e.stream_version, e.global_position, e.event_type) for e in stored]
    missing = found[("read_model_drift", f"rm_order_history:{gone['event_id']}")]["details"]
    assert missing["live"] is None and [e["position"] for e in missing["events"]] == [gone["global_position"]]
    assert found[("read_model_drift", f"rm_transactions:{tx_order}")]["details"]["columns"] == ["paid"]
    assert found[("read_model_drift", f"rm_orders:{order_id}")]["order_id"] == order_id
    service = found[("service_drift", f"shipping_shipments:{shipment}")]
    assert service["details"]["columns"] == ["status"] and service["category"] == "service"

    repaired = await reconcile(db, repair=True)
    assert repaired["repaired"] is not None and set(repaired["repaired"]["tables"]) == {t.name for t in OWNED}
    assert await pool.fetchval("SELECT status FROM rm_orders WHERE order_id = $1", order_id) == "completed"
    assert await db.count("SELECT count(*) FROM rm_order_history WHERE event_id = $1", gone["event_id"]) == 1
    # The services' tables are theirs: reported, never swapped.
    assert await pool.fetchval("SELECT status FROM shipping_shipments WHERE shipment_id = $1", shipment) == "Exception"
    # The swapped-in tables keep the live tables' indexes, under the same names.
    assert await db.count("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'"
                          " AND indexname IN ('rm_orders_customer_idx', 'rm_orders_pkey', 'rm_shipments_subject_idx')"
                          ) == 3

    after = await reconcile(db)
    assert set(by_key(after)) == {("service_drift", f"shipping_shipments:{shipment}")}
    rows = {r["kind"]: r["present"] for r in await pool.fetch("SELECT kind, present FROM reconciliation_discrepancies")}
    assert rows == {"read_model_drift": False, "service_drift": True}
    # The live consumer goes on in the swapped-in tables: everything delivered again changes nothing.
    await project_live(db, live_consumer(db))
    assert set(by_key(await reconcile(db))) == {("service_drift", f"shipping_shipments:{shipment}")}


async def test_the_ledger_is_reconciled_with_the_providers_reports_per_order_with_the_amounts(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    # A: we took TWD 1,200 by card, the provider says it captured TWD 1,000.
    await captured(db, "ord-a", [card(120000, "pi_a")])
    await provider_says(db, charge("evt_a", "ord-a", "pi_a", 100000))
    # B: the provider captured a payment for an order the ledger never took.
    await provider_says(db, charge("evt_b", "ord-b", "pi_b", 50000))
    # C: the ledger took a card payment the provider never reported.
    await captured(db, "ord-c", [card(70000, "pi_c")])
    # D: our card refund succeeded (the provider accepted it as re_d); the provider's last word: it failed.
    tx_d = await captured(db, "ord-d", [card(60000, "pi_d")])
    await provider_says(db, charge("evt_d", "ord-d", "pi_d", 60000))
    line = tx_d.preview_cancellation(fault_party=FaultParty.MERCHANT, seconds_before_service_start=72 * 3600,
                                     policy=POLICY, at=T).refunds[0]
    refund = RefundExecution.request("ord-d.3.1", "ord-d", RefundSource.CANCELLATION, line, at=T, customer_id="c-1")
    refund.accept("re_d", T)
    refund.succeed(T, "re_d")
    await append(db, refund.stream_id, new(refund))
    await provider_says(db, UpstreamRefundUpdated(
        provider_event_id="evt_d_re", upstream_type="refund.updated",
        order_ref=OrderRef(payment_intent_id="pi_d"), occurred_at=T + timedelta(hours=1), refund_id="re_d",
        payment_intent_id="pi_d", amount=Money(amount=60000, currency="TWD"),
        provider_amount=ProviderAmount(amount=60000, currency="twd"), status="failed", refund_created_at=T))
    # E: a dispute the provider closed as lost, naming only the charge; the ledger has no chargeback.
    await captured(db, "ord-e", [card(30000, "pi_e")])
    await provider_says(db, charge("evt_e", "ord-e", "pi_e", 30000))
    await provider_says(db, UpstreamDisputeClosed(
        provider_event_id="evt_e_dp", upstream_type="charge.dispute.closed", order_ref=OrderRef(charge_id="ch_e"),
        occurred_at=T + timedelta(days=20), dispute_id="dp_e", charge_id="ch_e",
        amount=Money(amount=30000, currency="TWD"), provider_amount=ProviderAmount(amount=30000, currency="twd"),
        status="lost", reason="fraudulent", dispute_created_at=T + timedelta(days=2), outcome="lost"))
    # G: same amount, another currency.
    await captured(db, "ord-g", [card(1000, "pi_g")])
    await provider_says(db, charge("evt_g", "ord-g", "pi_g", 1000, currency="USD"))
    # K: a Kolable course payment (reconciled by the war room): left out, counted apart.
    await provider_says(db, charge("evt_k", "ord-k", "pi_k", 99000, metadata={"course_id": "course-1"}))
    # OK: both sides agree.
    await captured(db, "ord-ok", [card(45000, "pi_ok")])
    await provider_says(db, charge("evt_ok", "ord-ok", "pi_ok", 45000))

    report = await reconcile(db)
    ledger = {(d["kind"], d["order_id"]): d for d in report["discrepancies"] if d["category"] == "ledger"}
    assert set(ledger) == {("ledger_amount_mismatch", "ord-a"), ("ledger_charge_missing", "ord-b"),
                           ("ledger_capture_missing_upstream", "ord-c"), ("ledger_refund_status_mismatch", "ord-d"),
                           ("ledger_chargeback_missing", "ord-e"), ("ledger_currency_mismatch", "ord-g")}
    a = ledger[("ledger_amount_mismatch", "ord-a")]
    assert a["details"]["ledger"] == {"amount": 120000, "currency": "TWD"}
    assert a["details"]["upstream"] == {"amount": 100000, "currency": "TWD"}
    assert "ord-a" in a["summary"] and "120000" in a["summary"] and "100000" in a["summary"]
    assert ledger[("ledger_charge_missing", "ord-b")]["details"]["order_has_transaction"] is False
    d = ledger[("ledger_refund_status_mismatch", "ord-d")]["details"]
    assert (d["ledger_status"], d["upstream_status"], d["refund"]) == ("succeeded", "failed", "re_d")
    e = ledger[("ledger_chargeback_missing", "ord-e")]["details"]
    assert e["upstream"] == {"amount": 30000, "currency": "TWD"} and e["dispute"] == "dp_e"
    g = ledger[("ledger_currency_mismatch", "ord-g")]["details"]
    assert (g["ledger"]["currency"], g["upstream"]["currency"]) == ("TWD", "USD")
    assert report["ledger"]["kolable_orders_excluded"] == 1 and report["ledger"]["kolable_facts_excluded"] == 1


async def test_duplicate_shipments_and_refunds_above_what_was_paid_are_found(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    to = ShippingAddress(name="陳小姐", line1="No. 1, Sec. 1, Zhongxiao E. Rd.", city="臺北市")

    def created(shipment_id: str, tracking: str, *, rma_id: str | None = None,
                order_id: str | None = None) -> ShipmentCreated:
        return ShipmentCreated(shipment_id=shipment_id, rma_id=rma_id, order_id=order_id, action="ship_replacement",
                               sku="MS-1", warehouse_id="wh-tpe", carrier="island", tracking_number=tracking,
                               ship_to=to, at=T)

    # RMA r-1 got two shipments (a second stream, e.g. written around the exactly-once path).
    await append(db, "shipment-SH-1", events_of(created("SH-1", "TRK1", rma_id="r-1")))
    await append(db, "shipment-SH-1B", events_of(created("SH-1B", "TRK2", rma_id="r-1")))
    # Order o-2 has one shipment of ours, and a carrier manifest lists another parcel shipped outside closeloop.
    await append(db, "shipment-SH-2", events_of(created("SH-2", "TRK3", order_id="o-2")))
    manifest = CarrierManifestImported(
        manifest_id="m-1", carrier="island", format="csv", file_sha256="a" * 64, by="wade", at=T,
        rows=[ManifestShipmentRow(line=1, carrier="island", tracking_number="TRK3", shipped_at=T, order_id="o-2",
                                  action="ship_replacement", outcome="closeloop_shipment"),
              ManifestShipmentRow(line=2, carrier="island", tracking_number="EXT9", shipped_at=T, order_id="o-2",
                                  action="ship_replacement", outcome="duplicate", duplicate_id="dup-1"),
              ManifestShipmentRow(line=3, carrier="island", tracking_number="EXT10", shipped_at=T, order_id="o-3",
                                  action="ship_replacement", outcome="external_shipment")])
    await append(db, "carrier_manifest-m-1", events_of(manifest))
    # Order o-9 paid TWD 600 by card; TWD 700 went back in two refunds.
    tx = await captured(db, "o-9", [card(60000, "pi_9")])
    for n, amount in ((1, 40000), (2, 30000)):
        line = tx.preview_cancellation(fault_party=FaultParty.MERCHANT, seconds_before_service_start=72 * 3600,
                                       policy=POLICY, at=T).refunds[0]
        part = line.model_copy(update={"amount": Money(amount=amount, currency="TWD")})
        r = RefundExecution.request(f"o-9.{n}", "o-9", RefundSource.ISSUED, part, at=T, customer_id="c-1")
        await append(db, r.stream_id, new(r))

    report = await reconcile(db)
    found = by_key(report)
    dup = found[("duplicate_shipment", "rma:r-1:ship_replacement")]["details"]
    assert sorted(p["tracking_number"] for p in dup["parcels"]) == ["TRK1", "TRK2"]
    dup2 = found[("duplicate_shipment", "order:o-2:ship_replacement")]["details"]
    assert sorted((p["origin"], p["tracking_number"]) for p in dup2["parcels"]) == [("closeloop", "TRK3"),
                                                                                    ("manifest", "EXT9")]
    assert ("duplicate_shipment", "order:o-3:ship_replacement") not in found  # one parcel only
    over = found[("refund_above_paid", "o-9")]
    assert over["order_id"] == "o-9" and over["details"]["paid"]["amount"] == 60000
    assert over["details"]["refunds_executed"]["amount"] == 70000
    assert "o-9" in over["summary"]


async def test_a_tampered_event_row_and_a_version_gap_are_found(new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await populated(db, 800)
    pool = db.store.pool
    edited = await pool.fetchrow("SELECT stream_id, stream_version FROM events WHERE event_type = 'OrderPlaced'"
                                 " ORDER BY global_position LIMIT 1")
    await pool.execute("UPDATE events SET data = jsonb_set(data, '{customer_id}', '\"someone-else\"')"
                       " WHERE stream_id = $1 AND stream_version = $2", edited["stream_id"], edited["stream_version"])
    gap = await pool.fetchrow("SELECT stream_id, max(stream_version) AS head FROM events"
                              " WHERE stream_id LIKE 'rma-%' GROUP BY stream_id ORDER BY stream_id LIMIT 1")
    await pool.execute("DELETE FROM events WHERE stream_id = $1 AND stream_version = 3", gap["stream_id"])

    report = await reconcile(db)
    found = by_key(report)
    assert ("store_tampered", f"{edited['stream_id']}@{edited['stream_version']}") in found
    assert ("store_version_gap", f"{gap['stream_id']}@4") in found
    assert ("store_broken_link", f"{gap['stream_id']}@4") in found
    tampered = found[("store_tampered", f"{edited['stream_id']}@{edited['stream_version']}")]
    assert tampered["details"]["position"] is not None and tampered["category"] == "store"


async def test_the_report_html_page_and_json_agree(new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await seed(db, 600)
    await project_live(db)
    await db.store.pool.execute("UPDATE rm_bills SET amount = amount + 100")
    report = await reconcile(db)
    bills = await db.count("SELECT count(*) FROM rm_bills")
    assert report["totals"]["by_kind"]["read_model_drift"] == bills > 0
    assert report["totals"]["by_kind"]["service_drift"] > 0  # shipping_shipments: nobody wrote it here
    reconciler = Reconciler(db.store)
    stored = await reconciler.get(report["run_id"])
    html = await reconciler.html(report["run_id"])
    assert html is not None and stored["report"] == report
    sha = hashlib.sha256(canonical(stored["report"])).hexdigest()
    assert stored["report_sha256"] == sha and f'id="report-sha256">{sha}<' in html
    ids_in_page = re.findall(r'<tr class="discrepancy" id="(d-[0-9a-f]+)" data-kind="([a-z_]+)"', html)
    assert sorted(ids_in_page) == sorted((d["discrepancy_id"], d["kind"]) for d in report["discrepancies"])
    kinds = dict(re.findall(r'<tr data-kind="([a-z_]+)"><td><code>[a-z_]+</code></td><td class="count">(\d+)</td>',
                            html))
    assert {k: int(v) for k, v in kinds.items()} == report["totals"]["by_kind"]
    assert f'id="total-discrepancies">{report["totals"]["discrepancies"]}<' in html
    completed = (await db.store.read_stream(f"reconciliation-{report['run_id']}"))[-1]
    assert completed.event_type == "ReconciliationCompleted" and completed.data["report_sha256"] == sha
    assert completed.data["discrepancies"] == report["totals"]["discrepancies"]


async def test_a_discrepancy_keeps_its_lifecycle_across_runs_with_who_and_why(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await populated(db, 400)
    order_id = await db.store.pool.fetchval("SELECT order_id FROM rm_orders ORDER BY order_id LIMIT 1")
    await db.store.pool.execute("UPDATE rm_orders SET city = 'nowhere' WHERE order_id = $1", order_id)
    reconciler = Reconciler(db.store)
    first = await reconciler.reconcile(RECONCILER, trigger="cli")
    [d] = first["discrepancies"]
    did = d["discrepancy_id"]
    assert d["new"] is True and d["status"] == "open"

    acked = await reconciler.acknowledge(did, "checking the consumer's dead letters", RECONCILER)
    assert (acked["status"], acked["acknowledged_by"], acked["acknowledged_role"]) == ("acknowledged", "huber",
                                                                                       "reconciler")
    second = await reconciler.reconcile(RECONCILER, trigger="cli")
    [again] = second["discrepancies"]
    assert again["discrepancy_id"] == did and again["new"] is False and again["status"] == "acknowledged"
    row = await reconciler.discrepancy(did)
    assert (row["status"], row["seen_count"], row["first_seen_run"], row["last_seen_run"]) == (
        "acknowledged", 2, first["run_id"], second["run_id"])

    with pytest.raises(Forbidden):
        await reconciler.resolve(did, "fixed it", RECONCILER)  # an approver decides
    with pytest.raises(InvalidTransition):
        await reconciler.acknowledge(did, "again", APPROVER)
    resolved = await reconciler.resolve(did, "the row was edited by hand; repaired by a swap", APPROVER)
    assert (resolved["status"], resolved["resolved_by"], resolved["resolved_reason"]) == (
        "resolved", "louis", "the row was edited by hand; repaired by a swap")

    third = await reconciler.reconcile(RECONCILER, trigger="cli")  # still there: reopened
    [back] = third["discrepancies"]
    assert back["discrepancy_id"] == did and back["reopened"] is True and back["status"] == "open"
    history = (await reconciler.discrepancy(did))["history"]
    assert [(h["event_type"], h["actor"], h["role"]) for h in history] == [
        ("DiscrepancyOpened", "huber", "reconciler"), ("DiscrepancyAcknowledged", "huber", "reconciler"),
        ("DiscrepancyResolved", "louis", "approver"), ("DiscrepancyReopened", "huber", "reconciler")]
    assert history[2]["data"]["reason"] == "the row was edited by hand; repaired by a swap"
    assert [r["discrepancy_id"] for r in await reconciler.discrepancies(run_id=second["run_id"])] == [did]


async def test_a_scheduled_run_fires_at_the_configured_time_once_across_two_replicas(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await populated(db, 300)
    tz = ZoneInfo("Asia/Taipei")
    at = (datetime.now(tz) + timedelta(seconds=3)).replace(microsecond=0)
    replicas = [DailyReconciliation(Reconciler(db.store), owner="it-projector", at=at.timetz().replace(tzinfo=None),
                                    tz=tz) for _ in range(2)]
    due = await replicas[0].arm(db.store.pool)
    assert due == at and await replicas[1].arm(db.store.pool) == at  # armed once, the second start changes nothing
    stop = asyncio.Event()
    runners = [TimerRunner(db.store.pool, "it-projector", {TIMER_KIND: r.on_due}, poll_seconds=0.2)
               for r in replicas]
    tasks = [asyncio.create_task(runner.run(stop)) for runner in runners]
    run_id = f"daily-{at.strftime('%Y%m%d')}"
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            status = await db.store.pool.fetchval("SELECT status FROM reconciliation_runs WHERE run_id = $1", run_id)
            if status == "completed":
                break
            await asyncio.sleep(0.2)
        assert status == "completed"
        await asyncio.sleep(1)  # let the other replica poll past the due time too
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    run = await Reconciler(db.store).get(run_id)
    assert (run["trigger"], run["requested_by"]) == ("schedule", "projector-scheduler")
    assert datetime.fromisoformat(run["started_at"]) >= at - timedelta(seconds=1)
    assert [e.event_type for e in await db.store.read_stream(f"reconciliation-{run_id}")] == [
        "ReconciliationStarted", "ReconciliationCompleted"]
    assert sum(len(r.runs) for r in replicas) == 1
    timer = await db.store.pool.fetchrow("SELECT due_at, fired_at FROM timers WHERE timer_id = $1",
                                         replicas[0].timer_id)
    assert timer["fired_at"] is None and timer["due_at"] == at + timedelta(days=1)  # re-armed for tomorrow


async def test_a_rebuild_swaps_in_while_reads_and_the_live_consumer_go_on_and_appends_nothing(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await populated(db, 4000)
    pool = db.store.pool
    orders = [r[0] for r in await pool.fetch("SELECT order_id FROM rm_orders ORDER BY order_id LIMIT 50")]
    head = await db.count("SELECT max(global_position) FROM events")
    stop = asyncio.Event()
    reads = errors = 0

    async def reader() -> None:
        nonlocal reads, errors
        rng = random.Random(3)
        while not stop.is_set():
            try:
                row = await pool.fetchrow("SELECT status FROM rm_orders WHERE order_id = $1", rng.choice(orders))
                errors += row is None
                reads += 1
            except asyncpg.PostgresError:
                errors += 1
            await asyncio.sleep(0)

    consumer = live_consumer(db)
    written = 0

    async def writer() -> None:
        # New orders keep coming while the rebuild runs; the live consumer applies them.
        nonlocal written
        seeder = Seeder(seed=99)
        last = head
        for streams, _ in batches(seeder, 600, 40):
            await db.store.append_many([(sid, NO_STREAM, evs) for sid, evs in streams])
            written += sum(len(evs) for _, evs in streams)
            await project_live(db, consumer, after=last)
            last = await db.count("SELECT max(global_position) FROM events")
            await asyncio.sleep(0.05)

    readers = [asyncio.create_task(reader()) for _ in range(3)]
    writing = asyncio.create_task(writer())
    rebuilds = Rebuilds(db.store)
    seen: list[dict[str, Any]] = []
    rebuild_id = await rebuilds.start(CommandContext(actor="ops", role="platform", correlation_id="it"))
    result = await rebuilds.run(rebuild_id, on_progress=seen.append)
    await writing
    stop.set()
    await asyncio.gather(*readers)

    assert errors == 0 and reads > 100
    assert result["applied"] >= result["total"] > 0 and result["events_per_second"] > 0
    assert {p["phase"] for p in seen} >= {"replaying", "indexing", "swapping"}
    assert (await rebuilds.get(rebuild_id))["status"] == "swapped"
    # Nothing appended but the writer's own events.
    assert await db.count("SELECT count(*) FROM events WHERE global_position > $1", head) == written
    # The swapped-in read models, with the live consumer still going, equal a replay of the store.
    await project_live(db, consumer, after=head)
    await mirror_shipping(db)  # the shipping service's table of the writer's shipments
    report = await reconcile(db)
    assert report["totals"]["discrepancies"] == 0, [d["summary"] for d in report["discrepancies"]][:5]


async def test_the_facts_consumer_is_effectively_once_and_fills_gaps_from_the_store(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await seed(db, 1500)
    live = ShadowBuild(db.store, "it_facts_live")
    await live.create()
    await live.index()
    consumer = EnvelopeBatchConsumer(db.store.pool, "it-facts", FactsProjection(db.store, "it_facts_live").apply,
                                     check_events=False)
    events = [e for e in (await db.store.read_all(limit=100000)) if FactsProjection.handles(e)]
    rng = random.Random(7)
    last = {e.stream_id: e.event_id for e in events}
    # Kafka never delivers these (none the last of its stream): a later event of the stream makes the
    # consumer read the stream back from the store.
    dropped = {e.event_id for e in rng.sample([e for e in events if last[e.stream_id] != e.event_id], 40)}
    delivered = [e for e in events if e.event_id not in dropped]
    chunks: list[Sequence[Any]] = [delivered[i:i + 97] for i in range(0, len(delivered), 97)]
    for chunk in chunks + chunks[::3]:  # and a third of them redelivered
        await consumer.process_records(fake_records(chunk))
    replay = ShadowBuild(db.store, "it_facts_replay")
    await replay.build()
    async with db.store.pool.acquire() as conn:
        for spec in OWNED:
            if spec.name in ("rm_orders", "rm_bills", "rm_order_history", "projection_streams"):
                continue
            assert await differing_keys(conn, f"it_facts_live.{spec.name}", f"it_facts_replay.{spec.name}",
                                        spec.key_sql, "to_jsonb(t)") == [], spec.name
    assert consumer.stats.duplicates > 0
    assert await db.count("SELECT count(*) FROM (SELECT * FROM it_facts_live.projection_streams EXCEPT"
                          " SELECT * FROM it_facts_replay.projection_streams WHERE projection = 'facts') d") == 0
    await live.drop()
    await replay.drop()


async def test_an_event_the_reducers_cannot_fold_is_dead_lettered_and_stops_neither_the_consumer_nor_a_replay(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    await populated(db, 300)
    # A stored payload that does not say what its type promises (an order placed with no order data).
    await append(db, "transaction-broken-1", [NewEvent("TransactionOpened", {"order_id": "broken-1"}, META)])
    await append(db, "order-broken-2", [NewEvent("OrderPlaced", {"order_id": "broken-2"}, META)])
    await project_live(db, after=await db.count("SELECT max(global_position) - 2 FROM events"))
    dead = {r["stream_id"]: r["consumer"] for r in await db.store.pool.fetch(
        "SELECT stream_id, consumer FROM dead_letters")}
    assert dead == {"transaction-broken-1": "projection:public.facts",
                    "order-broken-2": "projection:public.orders"}
    report = await reconcile(db)
    # The live path dead-lettered the order event before its history row; the replay's history has it:
    # what the live read model lacks because of a dead letter is reported, as it should be.
    event_id = await db.store.pool.fetchval("SELECT event_id FROM events WHERE stream_id = 'order-broken-2'")
    assert set(by_key(report)) == {("read_model_drift", f"rm_order_history:{event_id}")}
    assert sorted(e.split(":")[0] for e in report["store"]["fold_errors"]) == ["order-broken-2",
                                                                              "transaction-broken-1"]


async def test_closeloop_reconcile_exits_non_zero_on_a_discrepancy_and_rebuild_swaps_in(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    import json

    from typer.testing import CliRunner

    from libs.cli.main import app

    db = await new_db()
    await populated(db, 500)
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(runner.invoke, app, list(args), env={"DATABASE_URL": db.dsn, "COLUMNS": "200"})

    clean = await cli("reconcile", "--json", "--actor", "huber")
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.stdout)["totals"]["discrepancies"] == 0
    await db.store.pool.execute("UPDATE rm_orders SET district = 'x'")
    found = await cli("reconcile")
    assert found.exit_code == 1 and "read_model_drift" in found.stdout, found.output
    refused = await cli("reconcile", "--role", "customer")
    assert refused.exit_code == 2 and "only the" in refused.output
    rebuilt = await cli("reconcile", "rebuild", "--json")
    assert rebuilt.exit_code == 0, rebuilt.output
    result = json.loads(rebuilt.stdout)
    assert result["applied"] == result["total"] > 0 and result["tables"]
    assert (await cli("reconcile", "--json")).exit_code == 0  # the rebuild repaired the drift
    run = (await db.store.pool.fetch("SELECT requested_by, trigger FROM reconciliation_runs ORDER BY started_at"))[0]
    assert tuple(run) == ("huber", "cli")
