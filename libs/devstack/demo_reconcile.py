"""`make run` demo E: the daily reconciliation, run on demand over the demo's data. Huber (reconciler)
asks the projector for a run (POST /reconciliations), which replays the whole event store into shadow
read models, compares them row by row with the live ones, checks the ledger against the provider's
facts, shipments, refunds and the store's hash chains; the demo prints how long it took, what it
replayed, what it found, and where the report and the console are."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from rich.table import Table

RECONCILER = {"X-Actor": "huber", "X-Role": "reconciler"}


async def run_reconciliation(projector: str, auth: httpx.Auth | None = None, timeout: float = 180) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=20, auth=auth) as http:
        r = await http.post(f"{projector}/reconciliations", json={}, headers=RECONCILER)
        if r.status_code != 202:
            raise RuntimeError(f"POST /reconciliations: {r.status_code} {r.text}")
        run_id = r.json()["run_id"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            run = (await http.get(f"{projector}/reconciliations/{run_id}", headers=RECONCILER)).json()
            if run["status"] != "running":
                break
            if loop.time() > deadline:
                raise TimeoutError(f"demo E: reconciliation {run_id} still {run['phase']} after {timeout} s")
            await asyncio.sleep(0.25)
    if run["status"] != "completed":
        raise RuntimeError(f"demo E: reconciliation {run_id} {run['status']}: {run.get('error')}")
    summary = run["summary"]
    totals, store = summary["totals"], summary["store"]
    table = Table(title="demo E: the daily reconciliation, run now (POST /reconciliations)")
    for col in ("run", "events replayed", "took", "phases", "discrepancies"):
        table.add_column(col, overflow="fold")
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in summary["phases"].items())
    found = ", ".join(f"{k} {n}" for k, n in totals["by_kind"].items()) or "none"
    table.add_row(run_id, f"{store['events_replayed']:,} (of the store's {store['events']:,}: every projected stream)",
                  f"{summary['duration_seconds']:.2f} s", phases, f"{totals['discrepancies']} ({found})")
    return {"run_id": run_id, "duration_seconds": summary["duration_seconds"], "events": store["events"],
            "discrepancies": totals["discrepancies"], "by_kind": totals["by_kind"], "table": table,
            "report": f"{projector}/reconciliations/{run_id}.html"}
