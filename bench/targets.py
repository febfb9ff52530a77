"""The issue-6 targets, each measured against its raw baseline from the same run (bench/raw.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx

from bench.common import Timer, children_of, latency_ms, rss_mb
from libs.eventstore import EventStore, NewEvent

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- 1, 2: appends
async def command_appends(store: EventStore, streams: list[tuple[str, list[NewEvent]]],
                          conns: int) -> dict[str, Any]:
    """One command = one transaction = one append of one event with its expected version, from `conns`
    concurrent clients, each owning whole streams (as commands on different aggregates do)."""
    per = [streams[i::conns] for i in range(conns)]
    latencies: list[float] = []

    async def client(mine: list[tuple[str, list[NewEvent]]]) -> None:
        for sid, evs in mine:
            for version, e in enumerate(evs):
                t0 = time.perf_counter()
                await store.append(sid, version, [e])
                latencies.append(time.perf_counter() - t0)

    with Timer() as t:
        await asyncio.gather(*[client(m) for m in per])
    n = len(latencies)
    return {"events": n, "connections": conns, "rate": round(n / t.seconds), **latency_ms(latencies), "load": t.load}


async def bulk_appends(store: EventStore, streams: list[tuple[str, list[NewEvent]]],
                       per_call: int = 1000) -> dict[str, Any]:
    """The import path: whole new streams, about `per_call` events per EventStore.append_many call (one
    transaction), one connection (like the raw COPY baseline)."""
    batches: list[list[tuple[str, int | None, list[NewEvent]]]] = [[]]
    size = 0
    for sid, evs in streams:
        if size >= per_call:
            batches.append([])
            size = 0
        batches[-1].append((sid, 0, evs))
        size += len(evs)
    n = sum(len(evs) for _, evs in streams)
    with Timer() as t:
        for batch in batches:
            await store.append_many(batch)
    return {"events": n, "per_call": per_call, "rate": round(n / t.seconds), "load": t.load}


# ----------------------------------------------------------------------------- 3, 7, 8: CLI jobs
class RssSampler:
    """Peak RSS of a process tree and of PostgreSQL's processes, sampled every 100 ms in a thread."""

    def __init__(self, pid: int, postgres_pid: int | None) -> None:
        self.pid, self.postgres_pid = pid, postgres_pid
        self.peak_mb = 0.0
        self.postgres_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in [self.pid, *children_of(self.pid)]:
                self.peak_mb = max(self.peak_mb, rss_mb(p))
            if self.postgres_pid:
                for p in [self.postgres_pid, *children_of(self.postgres_pid)]:
                    self.postgres_peak_mb = max(self.postgres_peak_mb, rss_mb(p))
            self._stop.wait(0.1)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def cli_job(args: list[str], dsn: str, postgres_pid: int | None, timeout: float = 900) -> dict[str, Any]:
    """Run `closeloop …` as its own process (so its memory is its own), with its JSON result and peaks."""
    proc = subprocess.Popen([sys.executable, "-m", "libs.cli", *args, "--json", "--database-url", dsn], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with Timer() as t, RssSampler(proc.pid, postgres_pid) as rss:
        out, err = proc.communicate(timeout=timeout)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"closeloop {' '.join(args)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return {"result": json.loads(out), "seconds": round(t.seconds, 2), "load": t.load, "exit": proc.returncode,
            "peak_rss_mb": round(rss.peak_mb, 1), "postgres_peak_rss_mb": round(rss.postgres_peak_mb, 1)}


# ----------------------------------------------------------------------------- 4: projector tail
async def projector_tail(dsn: str, bootstrap: str, store: EventStore, stream_ids: list[str], consumer: str,
                         route: Any, timeout: float = 600) -> dict[str, Any]:
    """Produce the stored events of `stream_ids` to their topics as the relay would (key = stream id), while
    the running projector consumes them; its rate is from its first to its last applied event (counted by
    the ids it claimed in processed_events)."""
    from aiokafka import AIOKafkaProducer

    from libs.messaging import envelope

    streams = await store.read_streams(stream_ids)
    events = sorted((e for evs in streams.values() for e in evs), key=lambda e: e.cursor)
    ids = [e.event_id for e in events]
    conn = await asyncpg.connect(dsn)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()

    async def applied() -> int:
        return int(await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1"
                                       " AND event_id = ANY($2::uuid[])", consumer, ids))
    try:
        load0 = os.getloadavg()[0]
        futures = []
        for e in events:
            key, value, headers = envelope.encode(e)
            futures.append(await producer.send(route(e.stream_id), value=value, key=key,
                                               headers=[(k, v.encode()) for k, v in headers.items()]))
        await asyncio.gather(*futures)
        first: tuple[float, int] | None = None
        deadline = time.perf_counter() + timeout
        while True:
            n = await applied()
            now = time.perf_counter()
            if n and first is None:
                first = (now, n)
            if n >= len(ids):
                break
            if now > deadline:
                raise TimeoutError(f"projector applied {n} of {len(ids)}")
            await asyncio.sleep(0.05)
        assert first is not None
        seconds = max(now - first[0], 1e-6)
        rate = (len(ids) - first[1]) / seconds if len(ids) > first[1] else float(len(ids)) / seconds
    finally:
        await producer.stop()
        await conn.close()
    return {"events": len(ids), "rate": round(rate), "load": round(max(load0, os.getloadavg()[0]), 2)}


# ----------------------------------------------------------------------------- 5: read-your-writes
async def command_latency(orders: str, n: int, rate: float, auth: httpx.Auth) -> dict[str, Any]:
    """Place-order commands over HTTP with ?wait=true at a steady open-loop rate: the time until the response
    (which comes once the projector's read model shows the order)."""
    tz = ZoneInfo("Asia/Taipei")
    cmd_lat: list[float] = []
    rm_lat: list[float] = []
    caught = 0
    errors: list[str] = []
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, auth=auth, limits=limits) as http:
        async def one(i: int) -> None:
            nonlocal caught
            day = (datetime.now(tz) + timedelta(days=5 + i // 10)).date()
            start = datetime(day.year, day.month, day.day, 8 + i % 10, 0, tzinfo=tz)
            body = {"customer_id": f"bench-c-{i}", "staff_id": f"bench-s-{uuid.uuid4().hex[:8]}",
                    "service_code": "dishwash-standard",
                    "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()},
                    "address": {"line1": "x 1", "district": "大安區", "city": "臺北市"}}
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{orders}/orders", json=body, params={"wait": "true"})
                r.raise_for_status()
            except httpx.HTTPError as exc:  # counted, and reported with the figures
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return
            total = time.perf_counter() - t0
            j = r.json()
            caught += j["read_model"]["caught_up"]
            rm_lat.append(total)
            cmd_lat.append(total - j["read_model"]["waited_ms"] / 1000)

        tasks = []
        with Timer() as t:
            for i in range(n):
                await asyncio.sleep(max(0.0, t.t0 + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
    return {"commands": n, "target_rate": rate, "achieved_rate": round(n / t.seconds, 1), "caught_up": caught,
            "errors": len(errors), "first_errors": errors[:3],
            "command": latency_ms(cmd_lat), **latency_ms(rm_lat), "load": t.load}


# ----------------------------------------------------------------------------- 6: upstream
async def _wait_stored(dsn: str, streams: list[str], timeout: float) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + timeout
        while True:
            n = int(await conn.fetchval("SELECT count(DISTINCT stream_id) FROM events WHERE stream_id = ANY($1)",
                                        streams))
            if n >= len(streams):
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {n} of {len(streams)} upstream events stored")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def upstream_kafka(dsn: str, bootstrap: str, orders: int, seed: int) -> dict[str, Any]:
    """A Stripe-format stream of Kolable course orders (charges, refunds, disputes, duplicates, out of order)
    produced to payments.upstream as fast as the producer goes, and the rate at which the payments service
    stores, deduplicates and applies it (until the last distinct event is stored)."""
    from aiokafka import AIOKafkaProducer

    from services.registry import PAYMENTS_UPSTREAM
    from tests.support.stripe_events import encode, generate

    scenario = generate(seed, orders)
    bodies = [(e["id"].encode(), encode(e)) for e in scenario.events]
    streams = sorted({f"upstream-stripe-{e['id']}" for e in scenario.events})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        with Timer() as t:
            futures = [await producer.send(PAYMENTS_UPSTREAM, value=v, key=k) for k, v in bodies]
            await asyncio.gather(*futures)
        produced = time.perf_counter()
    finally:
        await producer.stop()
    done = await _wait_stored(dsn, streams, timeout=900)
    return {"orders": orders, "messages": len(bodies), "distinct_events": len(streams),
            "produce_rate": round(len(bodies) / (produced - t.t0)), "rate": round(len(bodies) / (done - t.t0)),
            "load": max(t.load, round(os.getloadavg()[0], 2))}


async def upstream_webhook(url: str, secret: str, orders: int, seed: int, senders: int = 8) -> dict[str, Any]:
    from services.payments.domain.signature import sign
    from tests.support.stripe_events import encode, generate

    queue = list(reversed(generate(seed, orders).events))
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        async def sender() -> None:
            while queue:
                body = encode(queue.pop())
                t0 = time.perf_counter()
                r = await http.post(url, content=body, headers={
                    "Content-Type": "application/json", "Stripe-Signature": sign(body, secret, int(time.time()))})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        with Timer() as t:
            await asyncio.gather(*[sender() for _ in range(senders)])
    return {"orders": orders, "requests": len(latencies), "senders": senders, "rate": round(len(latencies) / t.seconds),
            **latency_ms(latencies), "load": t.load}

