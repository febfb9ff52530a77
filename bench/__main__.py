"""make bench — append rate and command-to-read-model latency on this machine.

Starts its own embedded PostgreSQL and Tansu broker and the relay/orders/projector
processes, measures a raw asyncpg baseline in the same run, then:
  1. event store appends, one event per transaction, 8 concurrent connections, through
     EventStore.append (optimistic concurrency, hash chain, never-skip ordering);
  2. place-order commands over HTTP with ?wait=true: command latency and the latency until
     the projector's read model shows the order (read-your-writes), at a steady rate;
  3. upstream ingestion: a generated Stripe-format stream of Kolable course orders (charges,
     refunds, disputes, duplicates, out of order) produced to `payments.upstream` as fast as
     the producer goes (its rate is the baseline), and the rate at which the payments service
     stores, deduplicates and applies it (until the last distinct event is stored); then the
     same kind of stream through the signed webhook with 8 concurrent senders.
Writes bench/results/latest.json and prints a table. (Issue 6 extends this suite.)
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from libs.auth.client import ActorAuth, ActorTokens
from libs.devstack.kafka import EmbeddedKafka
from libs.devstack.postgres import EmbeddedPostgres
from libs.devstack.procs import free_port
from libs.devstack.supervisor import Child, _wait_ready
from libs.eventstore import EventStore, Metadata, NewEvent
from services.payments.domain.signature import sign
from services.registry import PAYMENTS_UPSTREAM
from tests.support.stripe_events import encode, generate

console = Console()
OUT = Path(__file__).parent / "results"
QUICK = os.environ.get("BENCH_QUICK") == "1"
RATES = [10, 25, 50]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def raw_appends(dsn: str, total: int, conns: int) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=conns, max_size=conns)
    await pool.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, stream text, v int, "
                       "data jsonb, UNIQUE (stream, v))")
    per = total // conns

    async def writer(w: int) -> None:
        async with pool.acquire() as c:
            for i in range(per):
                await c.execute("INSERT INTO bench_raw (stream, v, data) VALUES ($1, $2, $3)",
                                f"raw-{w}-{i % 50}", i, '{"amount": 1000, "currency": "TWD"}')

    t = time.perf_counter()
    await asyncio.gather(*[writer(w) for w in range(conns)])
    rate = per * conns / (time.perf_counter() - t)
    await pool.execute("DROP TABLE bench_raw")
    await pool.close()
    return rate


async def store_appends(store: EventStore, total: int, conns: int) -> tuple[float, list[float]]:
    per = total // conns
    meta = Metadata(actor="bench", role="service", correlation_id="bench")
    latencies: list[float] = []
    run = uuid.uuid4().hex[:6]

    async def writer(w: int) -> None:
        versions: dict[str, int] = {}
        for i in range(per):
            stream = f"bench-{run}-{w}-{i % 50}"
            t0 = time.perf_counter()
            await store.append(stream, versions.get(stream, 0),
                               [NewEvent("BenchEvent", {"amount": {"amount": 1000, "currency": "TWD"}, "i": i}, meta)])
            latencies.append(time.perf_counter() - t0)
            versions[stream] = versions.get(stream, 0) + 1

    t = time.perf_counter()
    await asyncio.gather(*[writer(w) for w in range(conns)])
    return per * conns / (time.perf_counter() - t), latencies


async def command_latency(orders: str, projector: str, n: int, rate: float, auth: httpx.Auth) -> dict[str, Any]:
    tz = ZoneInfo("Asia/Taipei")
    cmd_lat: list[float] = []
    rm_lat: list[float] = []
    caught = 0
    async with httpx.AsyncClient(timeout=10, auth=auth) as http:
        async def one(i: int) -> None:
            nonlocal caught
            day = (datetime.now(tz) + timedelta(days=5 + i // 10)).date()
            start = datetime(day.year, day.month, day.day, 8 + i % 10, 0, tzinfo=tz)
            body = {"customer_id": f"bench-c-{i}", "staff_id": f"bench-s-{uuid.uuid4().hex[:8]}",
                    "service_code": "dishwash-standard",
                    "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()},
                    "address": {"line1": "x 1", "district": "大安區", "city": "臺北市"}}
            t0 = time.perf_counter()
            r = await http.post(f"{orders}/orders", json=body, params={"wait": "true"})
            total = time.perf_counter() - t0
            r.raise_for_status()
            j = r.json()
            caught += j["read_model"]["caught_up"]
            rm_lat.append(total)
            cmd_lat.append(total - j["read_model"]["waited_ms"] / 1000)

        tasks = []
        t_start = time.perf_counter()
        for i in range(n):
            # Open-loop arrivals at a fixed rate, so slow responses do not lower the load.
            await asyncio.sleep(max(0.0, t_start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        achieved = n / (time.perf_counter() - t_start)
    ms = 1000
    return {"commands": n, "target_rate": rate, "achieved_rate": round(achieved, 1), "caught_up": caught,
            "command_p50_ms": round(pct(cmd_lat, 50) * ms, 1), "command_p95_ms": round(pct(cmd_lat, 95) * ms, 1),
            "command_p99_ms": round(pct(cmd_lat, 99) * ms, 1),
            "read_model_p50_ms": round(pct(rm_lat, 50) * ms, 1), "read_model_p95_ms": round(pct(rm_lat, 95) * ms, 1),
            "read_model_p99_ms": round(pct(rm_lat, 99) * ms, 1)}


async def _stored(conn: asyncpg.Connection, streams: list[str]) -> int:
    return int(await conn.fetchval("SELECT count(DISTINCT stream_id) FROM events WHERE stream_id = ANY($1)", streams))


async def _wait_stored(dsn: str, streams: list[str], timeout: float) -> float:
    """Seconds on the clock when every stream exists (polled every 50 ms)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + timeout
        while await _stored(conn, streams) < len(streams):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {await _stored(conn, streams)} of {len(streams)} upstream events stored")
            await asyncio.sleep(0.05)
        return time.perf_counter()
    finally:
        await conn.close()


async def upstream_kafka(dsn: str, bootstrap: str, orders: int, seed: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    scenario = generate(seed, orders)
    bodies = [(e["id"].encode(), encode(e)) for e in scenario.events]
    streams = sorted({f"upstream-stripe-{e['id']}" for e in scenario.events})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(PAYMENTS_UPSTREAM, value=v, key=k) for k, v in bodies]
        await asyncio.gather(*futures)
        produced = time.perf_counter()
    finally:
        await producer.stop()
    done = await _wait_stored(dsn, streams, timeout=900)
    return {"orders": orders, "messages": len(bodies), "distinct_events": len(streams),
            "produce_rate": round(len(bodies) / (produced - t0)),
            "ingest_rate": round(len(bodies) / (done - t0)),
            "ratio_to_produce": round((len(bodies) / (done - t0)) / (len(bodies) / (produced - t0)), 3)}


async def upstream_webhook(dsn: str, url: str, secret: str, orders: int, seed: int,
                           senders: int = 8) -> dict[str, Any]:
    scenario = generate(seed, orders)
    queue = list(reversed(scenario.events))
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        async def sender() -> None:
            while queue:
                body = encode(queue.pop())
                t = time.perf_counter()
                r = await http.post(url, content=body, headers={
                    "Content-Type": "application/json", "Stripe-Signature": sign(body, secret, int(time.time()))})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*[sender() for _ in range(senders)])
        elapsed = time.perf_counter() - t0
    return {"orders": orders, "requests": len(latencies), "senders": senders,
            "rate": round(len(latencies) / elapsed), "p50_ms": round(pct(latencies, 50) * 1000, 1),
            "p99_ms": round(pct(latencies, 99) * 1000, 1)}


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="closeloop-bench-"))
    pg = EmbeddedPostgres(root / "pg", fsync=True, log_path=root / "pg.log")
    kafka = EmbeddedKafka(log_path=root / "kafka.log")
    children: list[Child] = []
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                               "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
                               "python": platform.python_version()}
    try:
        pg.start()
        kafka.start()
        total = 2000 if QUICK else 8000
        console.print(f"raw asyncpg baseline: {total} single-row inserts on 8 connections …")
        raw = await raw_appends(pg.dsn, total, 8)
        store = await EventStore.connect(pg.dsn, max_size=10)
        console.print(f"event store: {total} appends (1 event each) on 8 connections …")
        rate, lat = await store_appends(store, total, 8)
        await store.close()
        results["append"] = {"events": total, "connections": 8, "raw_rate": round(raw),
                             "store_rate": round(rate), "ratio_to_raw": round(rate / raw, 2),
                             "p50_ms": round(pct(lat, 50) * 1000, 2), "p99_ms": round(pct(lat, 99) * 1000, 2)}
        env = {**os.environ, "DATABASE_URL": pg.dsn, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
               "CLOSELOOP_ENVIRONMENT": "test", "CLOSELOOP_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
               "CLOSELOOP_SECRET_KEY": "closeloop-bench-" + uuid.uuid4().hex}
        # The commands are placed by the platform's own service (one token: its lookup is in every request).
        tokens = ActorTokens(pg.dsn, env["CLOSELOOP_SECRET_KEY"], created_by="bench")
        auth = ActorAuth(tokens, write_as=("bench", "service"))
        secret = "whsec_bench_" + uuid.uuid4().hex
        env["CLOSELOOP_STRIPE_WEBHOOK_SECRETS"] = secret
        for name in ("relay", "orders", "projector", "payments"):
            port = free_port()
            child = Child(name, port, {**env, "CLOSELOOP_HTTP_PORT": str(port)}, root / f"{name}.log")
            child.start()
            children.append(child)
        for child in children:
            _wait_ready(child)
        await command_latency(children[1].url, children[2].url, 20, 20, auth)  # warm-up
        results["command_to_read_model"] = []
        for rate in RATES:
            n = int(rate * (5 if QUICK else 15))
            console.print(f"{n} place-order commands at {rate}/s with read-your-writes …")
            results["command_to_read_model"].append(await command_latency(children[1].url, children[2].url, n, rate,
                                                                          auth))
        orders = 300 if QUICK else 2000
        console.print(f"upstream: Stripe events of {orders} orders through payments.upstream …")
        results["upstream_kafka"] = await upstream_kafka(pg.dsn, kafka.bootstrap, orders, seed=1)
        console.print(f"upstream: Stripe events of {orders // 2} orders through the webhook, 8 senders …")
        results["upstream_webhook"] = await upstream_webhook(pg.dsn, f"{children[3].url}/webhooks/stripe", secret,
                                                             orders // 2, seed=2)
    finally:
        for child in reversed(children):
            child.stop()
        kafka.stop()
        pg.stop()
    OUT.mkdir(exist_ok=True)
    (OUT / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title=f"closeloop bench {results['date']} — {results['machine']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    a = results["append"]
    table.add_row("raw INSERT, 8 connections", f"{a['raw_rate']:,} events/s")
    table.add_row("EventStore.append, 8 connections", f"{a['store_rate']:,} events/s ({a['ratio_to_raw']:.0%} of raw)")
    table.add_row("append latency p50 / p99", f"{a['p50_ms']} / {a['p99_ms']} ms")
    for c in results["command_to_read_model"]:
        label = f"place order at {c['target_rate']}/s (achieved {c['achieved_rate']}/s, n={c['commands']})"
        table.add_row(label + ": command p50/p95/p99",
                      f"{c['command_p50_ms']} / {c['command_p95_ms']} / {c['command_p99_ms']} ms")
        table.add_row(label + ": → read model p50/p95/p99",
                      f"{c['read_model_p50_ms']} / {c['read_model_p95_ms']} / {c['read_model_p99_ms']} ms")
    k = results["upstream_kafka"]
    table.add_row(f"Kafka produce of {k['messages']:,} Stripe events (baseline)", f"{k['produce_rate']:,} events/s")
    table.add_row(f"upstream ingestion through Kafka ({k['orders']:,} orders, {k['distinct_events']:,} distinct)",
                  f"{k['ingest_rate']:,} events/s ({k['ratio_to_produce']:.1%} of produce)")
    w = results["upstream_webhook"]
    table.add_row(f"upstream ingestion through the webhook ({w['requests']:,} requests, {w['senders']} senders)",
                  f"{w['rate']:,} events/s, p50 {w['p50_ms']} / p99 {w['p99_ms']} ms")
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
