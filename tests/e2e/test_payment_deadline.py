"""An unpaid order is cancelled at its payment deadline, even when the orders service
was down when the deadline passed: the timer is stored with the order's events."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.devstack.client import PlatformClient
from services.orders.adapters.config import DEFAULT_POLICY
from tests.e2e.conftest import start_child
from tests.e2e.test_order_flow import order_body

pytestmark = pytest.mark.e2e

WINDOW_SECONDS = 6


async def _order_status_in_store(pg_dsn: str, order_id: str) -> list[str]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version",
                                f"order-{order_id}")
        return [r["event_type"] for r in rows]
    finally:
        await conn.close()


async def test_payment_deadline_auto_cancels_after_the_orders_service_restarts(stack: Any, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(DEFAULT_POLICY.read_text().replace(
        "payment_window_minutes = 15", f"payment_window_minutes = 15\npayment_window_seconds = {WINDOW_SECONDS}"))
    # Its own instance prefix: only this orders process owns (and fires) the timer.
    extra = {"CLOSELOOP_PREPAYMENT_POLICY_PATH": str(policy),
             "CLOSELOOP_INSTANCE_PREFIX": f"{stack.prefix}deadline{uuid.uuid4().hex[:4]}-"}
    orders = start_child("orders", stack.env, stack.logs, **extra)
    client = PlatformClient(orders.url, stack.url("projector"), auth=stack.auth)
    try:
        customer = f"c-{uuid.uuid4().hex[:8]}"
        placed = await client.command("/orders", order_body(customer, f"s-{uuid.uuid4().hex[:8]}", hour=19),
                                      actor=customer, role="customer")
        oid = placed["order_id"]
        deadline = datetime.fromisoformat(placed["payment_deadline"])
        assert placed["status"] == "awaiting_prepayment"

        orders.proc.kill()  # type: ignore[union-attr]  # crash: no clean shutdown
        orders.proc.wait(10)  # type: ignore[union-attr]
        while datetime.now(deadline.tzinfo) < deadline + timedelta(seconds=1):
            await asyncio.sleep(0.2)
        # Nobody fired the deadline while the service was down.
        assert await _order_status_in_store(stack.pg_dsn, oid) == ["OrderPlaced"]

        orders = start_child("orders", stack.env, stack.logs, **extra)
        view = await client.wait_for_status(oid, "cancelled", timeout=20)
        assert view["cancelled_by"] == "system" and view["fault_party"] == "customer"
        assert view["cancel_reason_code"] == "payment_timeout"
        assert {b["kind"]: b["status"] for b in view["bills"]} == {"prepayment": "closed"}
        assert await _order_status_in_store(stack.pg_dsn, oid) == ["OrderPlaced", "OrderCancelled"]
    finally:
        await client.aclose()
        orders.stop()

