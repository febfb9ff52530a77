"""Every process serves /healthz, /readyz and Prometheus /metrics with the platform's counters;
log lines are JSON and carry the request's correlation id."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from libs.devstack.client import PlatformClient
from tests.e2e.test_order_flow import order_body

pytestmark = pytest.mark.e2e


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_count_appends_publishes_and_consumed_events(stack: Any, client: PlatformClient) -> None:
    async def scrape(name: str) -> str:
        r = await client.http.get(f"{stack.url(name)}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return r.text

    before = {name: await scrape(name) for name in ("orders", "relay", "projector")}
    customer = f"c-{uuid.uuid4().hex[:8]}"
    placed = await client.command("/orders", order_body(customer, f"s-{uuid.uuid4().hex[:8]}"), actor=customer,
                                  role="customer", wait=True)
    assert placed["read_model"]["caught_up"]
    await asyncio.sleep(0.2)
    after = {name: await scrape(name) for name in ("orders", "relay", "projector")}
    appended = (metric(after["orders"], "closeloop_events_appended_total", category="order")
                - metric(before["orders"], "closeloop_events_appended_total", category="order"))
    assert appended == 1
    assert metric(after["orders"], "closeloop_http_request_seconds_count", route="/orders", status="201") >= 1
    assert (metric(after["relay"], "closeloop_relay_published_total", topic="orders.events")
            > metric(before["relay"], "closeloop_relay_published_total", topic="orders.events"))
    assert (metric(after["projector"], "closeloop_consumer_events_total", outcome="applied")
            > metric(before["projector"], "closeloop_consumer_events_total", outcome="applied"))
    assert "closeloop_relay_lag_events" in after["relay"]
    # Every consuming service reports its lag per consumer group, topic and partition it owns.
    groups = {"orders": "orders", "projector": "projector", "payments": "payments", "rma": "rma",
              "shipping": "shipping", "notifications": "notifications"}
    for name, group in groups.items():
        text = after.get(name) or await scrape(name)
        lines = [line for line in text.splitlines() if line.startswith("closeloop_consumer_lag_messages{")]
        assert any(f'group="{stack.prefix}{group}"' in line for line in lines), (name, lines[:3])
        assert "closeloop_http_request_seconds" in text and "closeloop_handler_errors_total" in text, name


async def test_log_lines_are_json_with_the_correlation_id(stack: Any, client: PlatformClient) -> None:
    cid = f"corr-{uuid.uuid4().hex[:8]}"
    r = await client.http.post(f"{stack.url('orders')}/orders/does-not-exist/accept",
                               json={"merchant_id": "m1"},
                               headers={"X-Correlation-ID": cid, "X-Actor": "m1", "X-Role": "merchant"})
    assert r.status_code == 404
    r = await client.http.post(f"{stack.url('orders')}/orders", json=order_body("c", "s", hour=10),
                               headers={"X-Correlation-ID": cid, "X-Actor": "c"})
    assert r.headers["X-Correlation-ID"] == cid
    assert r.status_code == 201
    await asyncio.sleep(0.2)
    log = stack.children["orders"].log_path.read_text().splitlines()
    records = [json.loads(line) for line in log if line.startswith("{")]
    mine = [rec for rec in records if rec.get("correlation_id") == cid]
    assert {rec["msg"].split(" ")[0] for rec in mine} == {"POST"}  # one access line per request
    assert any("/accept 404" in rec["msg"] for rec in mine) and any("/orders 201" in rec["msg"] for rec in mine)
    assert all(rec["service"] == "orders" and rec["level"] == "INFO" for rec in mine)
    # ...and the events the request appended carry it too.
    await client.order(r.json()["order_id"], min_version=r.json()["version"])
    [placed] = [h for h in await client.history(r.json()["order_id"]) if h["event_type"] == "OrderPlaced"]
    assert placed["correlation_id"] == cid
