"""A small client of the platform's HTTP APIs (the `make run` demo, the end-to-end tests),
and PaymentsFeed, which publishes payments contract events (services/payments/domain/
events.py) to `payments.events` the way the relay does: tests use it to drive the orders
service's reactions to payments on their own, without the payments service's rules."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import httpx
from faststream.kafka import KafkaBroker

from libs.domain.events import DomainEvent
from libs.messaging import envelope
from services.payments.application.contract import contract_stream_id
from services.registry import PAYMENTS_EVENTS


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class PlatformClient:
    def __init__(self, orders_url: str, projector_url: str, *, timeout: float = 10,
                 auth: httpx.Auth | None = None) -> None:
        """`auth` sends each request's bearer token (libs/auth/client.py ActorAuth: the token of the
        identity in X-Actor / X-Role, which `command` sets from its actor and role)."""
        self.orders_url = orders_url.rstrip("/")
        self.projector_url = projector_url.rstrip("/")
        self.http = httpx.AsyncClient(timeout=timeout, auth=auth)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def command(self, path: str, body: dict[str, Any], *, actor: str, role: str, method: str = "POST",
                      idempotency_key: str | None = None, wait: bool = True,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
        hdrs = {"X-Actor": actor, "X-Role": role, **(headers or {})}
        if idempotency_key:
            hdrs["Idempotency-Key"] = idempotency_key
        r = await self.http.request(method, f"{self.orders_url}{path}", json=body, headers=hdrs,
                                    params={"wait": "true"} if wait else None)
        if r.status_code >= 300:
            raise ApiError(r.status_code, r.json())
        return r.json()

    async def order(self, order_id: str, *, min_version: int | None = None) -> dict[str, Any]:
        params = {"min_version": str(min_version)} if min_version else None
        r = await self.http.get(f"{self.projector_url}/orders/{order_id}", params=params)
        if r.status_code >= 300:
            raise ApiError(r.status_code, r.json())
        return r.json()

    async def history(self, order_id: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"{self.projector_url}/orders/{order_id}/history")
        if r.status_code >= 300:
            raise ApiError(r.status_code, r.json())
        return r.json()

    async def wait_for_status(self, order_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        """Poll the read model (bounded) until the order reaches `status`."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = await self.order(order_id)
                if last["status"] == status:
                    return last
            except ApiError as exc:
                last = exc.body
            await asyncio.sleep(0.05)
        raise TimeoutError(f"order {order_id} did not reach {status} within {timeout} s; last seen: {last}")


class PaymentsFeed:
    """Publishes payments contract events to Kafka (see the module docstring)."""

    def __init__(self, bootstrap: str) -> None:
        self.broker = KafkaBroker(bootstrap, acks="all", enable_idempotence=False, client_id="closeloop-feed")
        self._versions: dict[str, int] = defaultdict(int)

    async def start(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()

    async def publish(self, event: DomainEvent, *, actor: str = "payments-feed") -> None:
        order_id = event.order_id  # type: ignore[attr-defined]
        stream_id = contract_stream_id(order_id)
        self._versions[stream_id] += 1
        key, value, headers = envelope.encode_external(
            event, stream_id=stream_id, stream_version=self._versions[stream_id],
            metadata={"actor": actor, "role": "service", "correlation_id": f"order-{order_id}",
                      "causation_id": None})
        await self.broker.publish(value, topic=PAYMENTS_EVENTS, key=key, headers=headers,
                                  correlation_id=headers[envelope.H_CORRELATION])
