"""`make run`: the supervisor brings the stack up, runs the seed demo, writes the endpoints
to dev.json (they answer), and Ctrl-C stops every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from libs.auth.roles import ALL_ROLES

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent has not reaped it yet).
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def test_make_run_starts_the_stack_runs_the_demo_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "CLOSELOOP_STATE_DIR": str(state), "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}
    for var in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(var, None)
    log = (tmp_path / "supervisor.out").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "libs.devstack", "up", "--fresh"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "Press Ctrl-C" not in (tmp_path / "supervisor.out").read_text():
            assert proc.poll() is None, (tmp_path / "supervisor.out").read_text()
            assert time.monotonic() < deadline, "the stack did not come up"
            time.sleep(0.5)
        out = (tmp_path / "supervisor.out").read_text()
        # The demo's final states, from the read model.
        assert "completed" in out and "已完成" in out
        assert "cancelled" in out and "fault customer" in out and "30 h" in out
        assert "penalty TWD 300.00" in out and "refunded TWD 300.00" in out  # half of 600.00 (24-48 h)
        # The Kolable war room: export + Stripe events classified, and the scorecard.
        for status in ("paid_valid", "refunded_no_rebuy", "refunded_rebought", "dispute_pending", "data_gap"):
            assert status in out, status
        assert "re-bought course" in out and "recovered by re-buys TWD 28,000.00 (1 re-buys)" in out
        # The mouse story: replaced once, closed, and its tracking page answers.
        assert "demo D" in out and "→ 1 shipment" in out and "RMA CLOSED (replacement_delivered)" in out
        dev = json.loads((state / "dev.json").read_text())
        # One demo token per role, printed and in dev.json; the APIs refuse a request without one.
        assert sorted(dev["tokens"]) == sorted(ALL_ROLES)
        for role, t in dev["tokens"].items():
            assert t["token"] in out, role
        page = next(line.split(": ", 1)[1].strip() for line in out.splitlines() if "mouse tracking page:" in line)
        assert httpx.get(page, timeout=5).status_code == 401
        r = httpx.get(page, timeout=5, headers={"Authorization": f"Bearer {dev['tokens']['auditor']['token']}"})
        assert r.status_code == 200 and "Delivered" in r.text
        # The operations console, printed with its URL: a browser is sent to sign in, a token opens it.
        console_url = next(line.split("│")[2].split()[0] for line in out.splitlines() if "operations console" in line)
        assert console_url == dev["console"]
        r = httpx.get(console_url, timeout=5, headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
        reconciler = dev["tokens"]["reconciler"]["token"]
        r = httpx.get(console_url, timeout=5, headers={"Authorization": f"Bearer {reconciler}"})
        assert r.status_code == 200 and "data-kpi=\"orders\"" in r.text
        # Demo E: a reconciliation of the whole demo store, clean, with its time and report.
        assert "demo E" in out
        report = next(line.split(": ", 1)[1].strip() for line in out.splitlines() if "reconciliation report:" in line)
        run = httpx.get(report.removesuffix(".html"), timeout=5,
                        headers={"Authorization": f"Bearer {dev['tokens']['auditor']['token']}"}).json()
        assert run["status"] == "completed" and run["summary"]["totals"]["discrepancies"] == 0, run["summary"]
        assert f"{run['summary']['duration_seconds']:.2f} s" in out
        for name, url in dev["services"].items():
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200, name
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200, name
        assert dev["postgres_url"].startswith("postgresql://") and dev["kafka_bootstrap_servers"]
        started = _descendants(proc.pid)
        assert len(started) >= 5  # postgres (+ its workers), tansu, relay, orders, projector

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if _alive(p)], "processes left behind after Ctrl-C"
        assert not (state / "dev.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
