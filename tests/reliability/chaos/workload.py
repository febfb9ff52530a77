"""The reliability workload: real HTTP commands against the running services, in the sequences the
end-to-end tests and the `make run` demo use (tests/e2e/test_payments_commands.py, test_refunds.py,
test_mouse_story.py, libs/devstack/demo_mouse.py), many flows at once.

- wallet orders (orders + payments): a top-up, an order that needs prepayment, prepaid from the member
  balance, then either served, billed below the prepayment (the excess goes back to the wallet),
  confirmed and partly refunded by customer service, or cancelled by the customer (refunded in full);
- warranty replacements (rma + shipping): a sales record, an RMA, its return label scanned in,
  processing, the ship command sent twice under two keys (racing shipping's own reaction), the
  carrier's delivery report; the RMA closes;
- credit scores (orders): cheap commands that keep the rate up.

Every command carries its own Idempotency-Key. A connection error, a timeout or a 503 is retried
with the same key (honouring Retry-After) until the command's deadline: that is what a client does
while a service restarts or the database is away. Each response is recorded; a 2xx is what the end
checks hold the store to."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from libs.devstack.demo_mouse import island_delivered
from services.shipping.bootstrap import DEV_CARRIER_SECRET
from tests.reliability.chaos.platform import Platform

TZ = ZoneInfo("Asia/Taipei")
ADDRESS = {"line1": "忠孝東路四段 1 號", "district": "大安區", "city": "臺北市"}
STAFF = ("tech-lin", "service")
CS = ("cs-agent-7", "platform")
BUREAU = ("credit-bureau", "service")
PREPAYMENT = 120000  # a 2-hour after-dinner slot at TWD 600.00 an hour: prepayment required
RETRYABLE_STATUS = {502, 503, 504}


def twd(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "TWD"}


@dataclass
class Sent:
    """One command as the client saw it in the end."""

    service: str
    method: str
    path: str
    key: str
    status: int  # 0: no answer before the deadline
    body: Any
    started: float
    latency: float  # first send to final answer, retries included
    attempts: int


@dataclass
class Recorder:
    sent: list[Sent] = field(default_factory=list)
    attempt_status: Counter[int] = field(default_factory=Counter)  # every answer, retried ones too
    retry_after_missing: int = 0  # 503s without Retry-After
    flow_errors: list[str] = field(default_factory=list)
    flows_done: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> list[Sent]:
        return [s for s in self.sent if 200 <= s.status < 300]

    def statuses(self) -> Counter[int]:
        return Counter(s.status for s in self.sent)


class FlowFailed(Exception):
    pass


class Workload:
    def __init__(self, platform: Platform, auth: httpx.Auth, *, command_deadline: float = 120,
                 wait_deadline: float = 180, seed: int | None = None) -> None:
        self.p = platform
        self.run = uuid.uuid4().hex[:6]
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(15, connect=2), auth=auth,
                                      limits=httpx.Limits(max_connections=200, max_keepalive_connections=100))
        self.rec = Recorder()
        self.command_deadline = command_deadline
        self.wait_deadline = wait_deadline
        self.rng = random.Random(seed)
        self.customers = [f"cust-{self.run}-{i}" for i in range(48)]
        self.merchants = [f"merchant-{self.run}-{i}" for i in range(12)]
        self.old_sku, self.new_sku = f"MOUSE-2003-{self.run}", f"MOUSE-2005-{self.run}"
        self.centre = f"svc-centre-{self.run}"
        self._n = 0
        self.expected_refunds: dict[str, dict[str, int]] = {}  # order -> refund source -> amount, as decided
        self.closed_rmas: list[str] = []

    def identities(self) -> list[tuple[str, str]]:
        """Every (actor, role) the workload acts as: their tokens are minted before any chaos."""
        return ([(c, "customer") for c in self.customers] + [(m, "merchant") for m in self.merchants]
                + [STAFF, CS, BUREAU, ("ops-1", "platform"), ("auditor", "auditor")])

    async def aclose(self) -> None:
        await self.http.aclose()

    def uid(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self.run}-{self._n}"

    # ------------------------------------------------------------------------------- requests
    async def command(self, service: str, method: str, path: str, body: Any = None, *, who: tuple[str, str],
                      content: bytes | None = None, headers: dict[str, str] | None = None,
                      ok: tuple[int, ...] = (200, 201)) -> Any:
        """Send a command with its own Idempotency-Key, retrying a lost answer or a 503 with the same key;
        returns the JSON of a 2xx, raises FlowFailed otherwise."""
        key = self.uid("k")
        hdrs = {"X-Actor": who[0], "X-Role": who[1], "Idempotency-Key": key, **(headers or {})}
        url = f"{self.p.url(service)}{path}"
        started = time.monotonic()
        deadline = started + self.command_deadline
        attempts, status, out = 0, 0, None
        while True:
            attempts += 1
            try:
                if content is not None:
                    r = await self.http.request(method, url, content=content, headers=hdrs)
                else:
                    r = await self.http.request(method, url, json=body, headers=hdrs)
            except httpx.TransportError:  # refused (restarting), reset (killed), timed out: retry, same key
                r = None
            if r is not None:
                status = r.status_code
                self.rec.attempt_status[status] += 1
                try:
                    out = r.json()
                except ValueError:
                    out = r.text
                if status not in RETRYABLE_STATUS:
                    break
                if status == 503 and "retry-after" not in r.headers:
                    self.rec.retry_after_missing += 1
            if time.monotonic() > deadline:
                break
            delay = 0.2 * min(attempts, 5)
            if r is not None and r.headers.get("retry-after", "").isdigit():
                delay = min(float(r.headers["retry-after"]), 2.0)
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
        now = time.monotonic()
        self.rec.sent.append(Sent(service, method, path, key, status if r is not None else 0, out, started,
                                  now - started, attempts))
        if status not in ok:
            raise FlowFailed(f"{method} {service}{path}: {status} {str(out)[:300]}")
        return out

    async def get(self, service: str, path: str, **params: Any) -> Any:
        """A query; None while the service is away or the answer is not 200."""
        try:
            r = await self.http.get(f"{self.p.url(service)}{path}", params=params or None,
                                    headers={"X-Actor": "auditor", "X-Role": "auditor"})
        except httpx.TransportError:
            return None
        return r.json() if r.status_code == 200 else None

    async def until(self, what: str, check: Any) -> Any:
        deadline = time.monotonic() + self.wait_deadline
        while time.monotonic() < deadline:
            got = await check()
            if got:
                return got
            await asyncio.sleep(0.2 + 0.3 * self.rng.random())
        raise FlowFailed(f"{what}: not seen within {self.wait_deadline:.0f} s")

    # ---------------------------------------------------------------------------------- setup
    async def setup(self) -> None:
        """The after-sales catalogue of this run: an end-of-life model and its substitute in stock."""
        await self.command("rma", "PUT", f"/catalogue/{self.new_sku}",
                           {"name": self.new_sku, "price": twd(129000), "warranty_days": 365}, who=STAFF)
        await self.command("rma", "PUT", f"/catalogue/{self.old_sku}", {
            "name": "無線光學滑鼠 (2003)", "price": twd(129000), "warranty_days": 365, "eol": True,
            "substitutes": [{"alt_sku": self.new_sku, "feature_score": 80, "price_delta": twd(0)}]}, who=STAFF)
        await self.command("rma", "PUT", f"/warehouses/{self.centre}", {"name": "台北維修中心", "kind": "warehouse"},
                           who=STAFF)
        await self.command("rma", "PUT", f"/stock/{self.centre}/{self.new_sku}",
                           {"available": 1_000_000, "reason": "reliability stock take"}, who=STAFF)

    # ---------------------------------------------------------------------------------- flows
    async def wallet_order(self, cancel: bool) -> None:
        customer = self.rng.choice(self.customers)
        merchant = self.rng.choice(self.merchants)
        c, m = (customer, "customer"), (merchant, "merchant")
        await self.command("payments", "POST", f"/wallets/{customer}/top-ups",
                           {"amount": twd(300000), "reference": self.uid("tu")}, who=c)
        day = (datetime.now(TZ) + timedelta(days=self.rng.randint(3, 20))).date()
        start = datetime(day.year, day.month, day.day, 19, 0, tzinfo=TZ)
        placed = await self.command("orders", "POST", "/orders", {
            "customer_id": customer, "staff_id": self.uid("staff"), "service_code": "dishwash-standard",
            "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat()},
            "address": ADDRESS}, who=c)
        oid = placed["order_id"]

        async def tx_status(*wanted: str) -> Any:
            t = await self.get("payments", f"/payments/{oid}")
            return t if t and t["status"] in wanted else None

        await self.until(f"transaction of {oid} opened", lambda: tx_status("unpaid"))
        await self.command("payments", "POST", f"/payments/{oid}/prepay-with-balance", None, who=c)
        await self.until(f"order {oid} awaiting confirmation", lambda: self.order_status(oid, "awaiting_confirmation"))
        if cancel:
            await self.command("orders", "POST", f"/orders/{oid}/cancel",
                               {"cancelled_by": "customer", "reason_code": "plans_changed"}, who=c)
            await self.until(f"order {oid} cancelled", lambda: self.order_status(oid, "cancelled"))
            self.expected_refunds[oid] = {"cancellation": PREPAYMENT}  # free: three days or more ahead
            self.rec.flows_done["order_cancelled"] += 1
            return
        await self.command("orders", "POST", f"/orders/{oid}/accept", {"merchant_id": merchant}, who=m)
        await self.command("orders", "POST", f"/orders/{oid}/start", {"merchant_id": merchant}, who=m)
        await self.command("orders", "POST", f"/orders/{oid}/bill", {"merchant_id": merchant, "actual_minutes": 90},
                           who=m)
        await self.command("orders", "POST", f"/orders/{oid}/bill/confirm", {"customer_id": customer, "revision": 1},
                           who=c)
        await self.until(f"order {oid} completed", lambda: self.order_status(oid, "completed"))
        # TWD 900.00 billed of the 1,200.00 prepaid: the excess went back; customer service refunds TWD 100.00.
        await self.command("payments", "POST", f"/payments/{oid}/refunds",
                           {"amount": twd(10000), "reason": "the service started late"}, who=CS)
        self.expected_refunds[oid] = {"settlement": PREPAYMENT - 90000, "issued": 10000}
        self.rec.flows_done["order_completed_refunded"] += 1

    async def order_status(self, oid: str, status: str) -> Any:
        o = await self.get("projector", f"/orders/{oid}")
        return o if o and o["status"] == status else None

    async def warranty_replacement(self) -> None:
        customer = self.rng.choice(self.customers)
        serial = self.uid("SN").upper()
        sold_on = (datetime.now(TZ).date() - timedelta(days=200)).isoformat()
        await self.command("rma", "POST", "/sales-records", {"serial": serial, "sku": self.old_sku,
                                                             "invoice_number": self.uid("INV"), "sold_on": sold_on,
                                                             "channel": "store"}, who=STAFF)
        opened = await self.command("rma", "POST", "/rmas", {
            "serial": serial, "sku": self.old_sku, "fault_code": "left_button.no_response",
            "warehouse_id": self.centre, "description": "the left button does nothing",
            "contact": {"customer_id": customer, "email": f"{customer}@example.com", "phone": "+886912345678",
                        "locale": "zh-TW"},
            "ship_to": {"name": "陳先生", "line1": "復興南路一段 100 號", "city": "臺北市", "postal_code": "106"}},
            who=(customer, "customer"))
        rma_id = opened["rma_id"]

        async def labels() -> Any:
            got = await self.get("shipping", "/labels", rma_id=rma_id)
            return got["labels"] if got else None

        [label] = await self.until(f"return label of {rma_id}", labels)
        await self.command("shipping", "POST", "/labels/scan", {"payload": label["barcode_payload"],
                                                                "location": "台北維修中心"}, who=STAFF)
        await self.until(f"{rma_id} shipped in", lambda: self.rma_at(rma_id, "SHIPPED_IN"))
        await self.command("rma", "POST", f"/rmas/{rma_id}/start-processing", {}, who=STAFF)
        ready = await self.until(f"{rma_id} ready", lambda: self.rma_at(rma_id, "PROCESSING", "ready", "SHIPPED_OUT"))
        rep = ready["replacement"]
        body = {"rma_id": rma_id, "action": "ship_replacement", "sku": rep["sku"],
                "warehouse_id": rep["warehouse_id"], "ship_to": ready["ship_to"], "contact": ready["contact"]}
        for _ in range(2):  # two clicks, two keys, racing shipping's own reaction: one shipment
            await self.command("shipping", "POST", "/shipments", body, who=STAFF)
        shipped = await self.until(f"{rma_id} shipped out", lambda: self.rma_at(rma_id, "SHIPPED_OUT"))
        tracking = shipped["shipment"]["tracking_number"]
        csv, signed = island_delivered(tracking, DEV_CARRIER_SECRET)
        await self.command("shipping", "POST", "/carriers/island/events", content=csv, who=STAFF, headers=signed)
        await self.until(f"{rma_id} closed", lambda: self.rma_at(rma_id, "CLOSED"))
        self.closed_rmas.append(rma_id)
        self.rec.flows_done["rma_replaced"] += 1

    async def rma_at(self, rma_id: str, status: str, stage: str | None = None, or_status: str | None = None) -> Any:
        v = await self.get("rma", f"/rmas/{rma_id}")
        if not v:
            return None
        if v["status"] == or_status:
            return v
        return v if v["status"] == status and (stage is None or v.get("stage") == stage) else None

    async def credit_score(self) -> None:
        await self.command("orders", "PUT", f"/customers/{self.rng.choice(self.customers)}/credit-score",
                           {"score": self.rng.randint(600, 800), "source": "reliability"}, who=BUREAU)
        self.rec.flows_done["credit_score"] += 1

    # ------------------------------------------------------------------------------- driving
    async def one_flow(self) -> None:
        roll = self.rng.random()
        try:
            if roll < 0.35:
                await self.wallet_order(cancel=False)
            elif roll < 0.55:
                await self.wallet_order(cancel=True)
            elif roll < 0.80:
                await self.warranty_replacement()
            else:
                for _ in range(4):
                    await self.credit_score()
        except FlowFailed as exc:
            self.rec.flow_errors.append(str(exc))

    async def run_until(self, commands: int, concurrency: int, chaos_over: asyncio.Event | None = None) -> None:
        """Run flows `concurrency` at a time until `commands` commands were sent (and the chaos is over)."""
        start = len(self.rec.sent)

        def more() -> bool:
            return len(self.rec.sent) - start < commands or (chaos_over is not None and not chaos_over.is_set())

        async def worker() -> None:
            while more():
                await self.one_flow()

        await asyncio.gather(*[worker() for _ in range(concurrency)])
