"""`make run` demo D, the after-sales seed (001): the wireless mouse bought at half price whose left
button fails within the warranty. Over the running rma, shipping and notifications services: the
RMA opens (ELIGIBLE from the sales record), shipping issues the return label, the parcel is
scanned in, the 2003 model is end of life so the newer 2005 model is chosen, the unit comes from
the retail department (a stock transfer), the replacement is shipped exactly once although the
ship command is sent five times at once, the local carrier (島嶼物流) reports it delivered, the
RMA closes, and the customer's messages are counted per stage. Printed with the tracking page.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from rich.table import Table

TZ = ZoneInfo("Asia/Taipei")
STAFF = {"X-Actor": "tech-lin", "X-Role": "service"}
OLD, NEW = "MS-WL-OPT-2003", "MS-WL-OPT-2005"  # services/rma/config/catalogue.toml
CENTRE, RETAIL = "tw-service-centre", "tw-retail"


async def _ok(http: httpx.AsyncClient, method: str, url: str, body: Any = None,
              headers: dict[str, str] | None = None) -> Any:
    r = await http.request(method, url, json=body, headers=headers or STAFF)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"{method} {url}: {r.status_code} {r.text}")
    return r.json()


def island_delivered(tracking: str, carrier_secret: str) -> tuple[bytes, dict[str, str]]:
    """The local carrier's (島嶼物流) CSV report of the parcel picked up, on its way and delivered, and the
    headers of its signed webhook (X-Carrier-Signature: sha256=<HMAC of the body>)."""
    now = datetime.now(TZ)
    csv = "\n".join(["BillNo,StatusName,StatusTime,StationName,SerialNo,Memo"] + [
        f"{tracking},{status},{(now + timedelta(hours=h)).strftime('%Y/%m/%d %H:%M')},台北營業所,{n},"
        for n, (status, h) in enumerate((("已取件", 1), ("配送中", 18), ("已送達", 20)), start=1)]).encode()
    sig = hmac.new(carrier_secret.encode(), csv, hashlib.sha256).hexdigest()
    return csv, {"Content-Type": "text/csv", "X-Carrier-Signature": f"sha256={sig}"}


async def _until(what: str, fn: Any, timeout: float = 45) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await fn()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"demo D: {what} not seen within {timeout} s")
        await asyncio.sleep(0.1)


async def run_mouse_story(endpoints: dict[str, Any], carrier_secret: str,
                          auth: httpx.Auth | None = None) -> dict[str, Any]:
    """`auth` sends each request's bearer token (libs/auth/client.py ActorAuth)."""
    services = endpoints["services"]
    rma, shipping, notifications = services["rma"], services["shipping"], services["notifications"]
    run = secrets.token_hex(3)
    async with httpx.AsyncClient(timeout=20, auth=auth) as http:
        async def view(rma_id: str) -> dict[str, Any]:
            return await _ok(http, "GET", f"{rma}/rmas/{rma_id}")  # type: ignore[no-any-return]

        async def at(rma_id: str, status: str, stage: str | None = None) -> dict[str, Any]:
            async def check() -> dict[str, Any] | None:
                v = await view(rma_id)
                return v if v["status"] == status and (stage is None or v.get("stage") == stage) else None
            return await _until(f"{rma_id} {status}", check)  # type: ignore[no-any-return]

        # Bought at half price 340 days ago; the newer model is at the retail department only.
        serial = f"SN-2003-{run.upper()}"
        await _ok(http, "PUT", f"{rma}/stock/{RETAIL}/{NEW}", {"available": 5, "reason": "demo stock take"})
        await _ok(http, "PUT", f"{rma}/stock/{CENTRE}/{NEW}", {"available": 0, "reason": "demo stock take"})
        sold_on = (datetime.now(TZ).date() - timedelta(days=340)).isoformat()
        await _ok(http, "POST", f"{rma}/sales-records", {"serial": serial, "sku": OLD, "invoice_number": f"INV-{run}",
                                                         "sold_on": sold_on, "channel": "半價促銷 half-price sale"})
        customer = f"cust-chen-{run}"
        opened = await _ok(http, "POST", f"{rma}/rmas", {
            "serial": serial, "sku": OLD, "fault_code": "left_button.no_response", "warehouse_id": CENTRE,
            "description": "左鍵完全沒反應 the left button does nothing",
            "contact": {"customer_id": customer, "email": f"{customer}@example.com", "phone": "+886912345678",
                        "locale": "zh-TW"},
            "ship_to": {"name": "陳先生", "line1": "復興南路一段 100 號", "city": "臺北市", "postal_code": "106"}},
            headers={"X-Actor": customer, "X-Role": "customer"})
        rma_id = opened["rma_id"]

        async def label() -> list[dict[str, Any]]:
            return list((await _ok(http, "GET", f"{shipping}/labels?rma_id={rma_id}"))["labels"])

        [return_label] = await _until("the return label", label)
        await _ok(http, "POST", f"{shipping}/labels/scan", {"payload": return_label["barcode_payload"],
                                                             "location": "台北維修中心"})
        await at(rma_id, "SHIPPED_IN")
        processing = await _ok(http, "POST", f"{rma}/rmas/{rma_id}/start-processing", {})
        decision = processing["replacement"]["decision"]
        [transfer] = (await _ok(http, "GET", f"{rma}/transfers?rma_id={rma_id}"))["items"]
        await _ok(http, "POST", f"{rma}/transfers/{transfer['transfer_id']}/accept", {})
        ready = await at(rma_id, "PROCESSING", "ready")
        rep = ready["replacement"]
        body = {"rma_id": rma_id, "action": "ship_replacement", "sku": rep["sku"], "warehouse_id": rep["warehouse_id"],
                "ship_to": ready["ship_to"], "contact": ready["contact"]}
        sent = await asyncio.gather(*[http.post(f"{shipping}/shipments", json=body,
                                                headers={**STAFF, "Idempotency-Key": f"demo-{run}-{n}"})
                                      for n in range(5)])
        shipped = await at(rma_id, "SHIPPED_OUT")
        tracking = shipped["shipment"]["tracking_number"]

        csv, signed = island_delivered(tracking, carrier_secret)
        r = await http.post(f"{shipping}/carriers/island/events", content=csv, headers=signed)
        r.raise_for_status()
        closed = await at(rma_id, "CLOSED")

        async def messages() -> list[dict[str, Any]] | None:
            got = await _ok(http, "GET", f"{notifications}/notifications?subject_id={rma_id}&limit=200")
            items = [n for n in got["items"] if n["audience"] == "customer"]
            return items if any(n["stage"] == "completed" for n in items) else None

        customer_messages = await _until("the customer's messages", messages)
    stages = Counter(n["stage"] for n in customer_messages if n["channel"] == "email")
    page = f"{shipping}/track/{tracking}/page"
    table = Table(title="demo D: the mouse replaced under warranty (seed 001)")
    for col in ("step", "what happened"):
        table.add_column(col, overflow="fold")
    table.add_row("RMA", f"{rma_id}: {OLD} serial {serial}, left button no response, bought at half price "
                         f"{sold_on}; warranty: {opened['warranty']['basis']['source']} → {opened['status']}")
    table.add_row("return label", f"{return_label['label_id']} ({return_label['carrier']}), scanned in → SHIPPED_IN")
    table.add_row("replacement", f"{OLD} is end of life → {decision['sku']} (feature score, price delta; approval "
                                 f"{'needed' if decision['needs_approval'] else 'not needed'})")
    table.add_row("stock", f"none at {CENTRE} → transfer {transfer['transfer_id']} from {RETAIL}, accepted")
    table.add_row("shipment", f"ship command sent 5 times at once → {len({s.json()['shipment_id'] for s in sent})} "
                              f"shipment {shipped['shipment']['shipment_id']}, tracking {tracking}")
    table.add_row("delivered", f"島嶼物流 已取件 → 配送中 → 已送達; RMA {closed['status']} "
                               f"({closed['closed']['resolution']})")
    order = ["received", "label_issued", "shipped_in", "shipped_out", "out_for_delivery", "completed"]
    per_stage = ", ".join(f"{stage}: {stages[stage]}" for stage in sorted(stages, key=lambda s: (
        order.index(s) if s in order else len(order), s)))
    table.add_row("notifications", f"{per_stage} (e-mail messages per stage; SMS and in-app alike)")
    table.add_row("tracking page", page)
    return {"rma_id": rma_id, "tracking_number": tracking, "tracking_page": page, "status": closed["status"],
            "stages": dict(stages), "table": table}
