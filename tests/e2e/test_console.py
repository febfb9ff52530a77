"""The operations console in a real headless browser (Debian's Chromium driven by Playwright, no
browser download): the page loads with nothing from elsewhere, shows the scorecard numbers the
payments API returns and the war room's queues, and the history page shows the actor of each change.
A screenshot is taken (kept in the test's tmp directory, and in $CLOSELOOP_SCREENSHOTS when set)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
COLUMNS = ["order_id", "student_id", "course_id", "amount", "currency", "ordered_at", "payment_status", "paid_at",
           "payment_ref", "refunded_amount", "refunded_at", "dispute_status", "disputed_at", "line_thread"]


def export(run: str) -> bytes:
    """A small war-room export: paid, refunded without re-buy, under dispute, and one missing its student."""
    rows = []
    for n, (status, refunded_at, dispute, student) in enumerate([
            ("paid", "", "none", f"s1-{run}"), ("refunded", "2025-05-14T15:00:00+08:00", "none", f"s2-{run}"),
            ("paid", "", "needs_response", f"s3-{run}"), ("paid", "", "none", "")], start=1):
        rows.append({"order_id": f"C{run}-{n}", "student_id": student, "course_id": "course-pro", "amount": "28000",
                     "currency": "TWD", "ordered_at": "2025-05-12T10:00:00+08:00", "payment_status": status,
                     "paid_at": "2025-05-12T10:02:00+08:00", "payment_ref": f"pi_C{run}{n}", "refunded_amount": "",
                     "refunded_at": refunded_at, "dispute_status": dispute,
                     "disputed_at": "2025-05-20" if dispute != "none" else "", "line_thread": "line://chat/1"})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    if not HAVE_CHROMIUM:
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: .ci/run installs Debian's chromium package")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def test_the_console_shows_the_scorecard_the_api_returns_and_each_changes_actor(
        stack: Any, browser: Any, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    payments, projector = stack.url("payments"), stack.url("projector")
    async with httpx.AsyncClient(timeout=20, auth=stack.auth) as http:
        r = await http.post(f"{payments}/kolable/orders/import", content=export(run),
                            headers={"Content-Type": "text/csv", "X-Actor": "wade", "X-Role": "importer"})
        assert r.status_code == 200, r.text
        card = (await http.get(f"{payments}/kolable/reconciliation/scorecard")).json()

    # The console is for operations: a browser without a session is sent to the sign-in form, where a
    # reconciler pastes their token; the session cookie then opens the console.
    token = await stack.tokens.token("huber", "reconciler")
    page = await browser.new_page()
    external: list[str] = []
    page.on("request", lambda req: external.append(req.url) if not req.url.startswith(projector) else None)
    await page.goto(f"{projector}/console")
    assert "/console/login" in page.url
    await page.fill("input[name=token]", token)
    async with page.expect_navigation():
        await page.click("#login button[type=submit]")
    assert page.url.rstrip("/").endswith("/console"), page.url
    response = await page.reload()
    assert response is not None and response.status == 200
    shot = tmp_path / "console.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("CLOSELOOP_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["CLOSELOOP_SCREENSHOTS"]) / "console.png")
    assert external == [], f"the console loaded something from elsewhere: {external}"

    async def kpi(name: str) -> str:
        return (await page.inner_text(f"[data-kpi='{name}']")).strip()

    # The same numbers as the API (the page is rendered after the import, so it includes it).
    assert await kpi("orders") == str(card["orders"])
    for line in card["by_status"]:
        assert await kpi(line["status"]) == str(line["count"]), line["status"]
    assert await kpi("needing_action") == str(len(card["needing_action"]))
    twd = card["cash_gap"]["TWD"]["amount"]
    assert await kpi("cash_gap") == f"TWD {twd // 100:,}.{twd % 100:02d}"
    # Our orders in the queues they belong to.
    assert f"C{run}-2" in await page.inner_text("[data-queue='refunded_no_rebuy']")
    assert f"C{run}-3" in await page.inner_text("[data-queue='dispute_pending']")
    assert f"C{run}-4" in await page.inner_text("[data-queue='data_gap']")

    # The history of one of them, by following the link: who changed what.
    await page.click(f"a:text('C{run}-2')")
    await page.wait_for_selector("#history")
    actors = [a.strip() for a in await page.locator("[data-actor]").all_inner_texts()]
    assert "wade" in actors
    assert "KolableOrderImported" in await page.inner_text("#history")
    await page.screenshot(path=str(tmp_path / "history.png"), full_page=True)


async def test_the_console_sign_in_refuses_a_bad_or_wrong_role_token_and_the_cookie_opens_no_command(
        stack: Any, browser: Any) -> None:
    projector = stack.url("projector")
    page = await browser.new_page()
    await page.goto(f"{projector}/console/login")
    await page.fill("input[name=token]", "clt_" + "x" * 43)
    await page.click("#login button[type=submit]")
    assert "unknown bearer token" in await page.inner_text("#login-error")
    customer = await stack.tokens.token(f"cust-{uuid.uuid4().hex[:6]}", "customer")
    await page.fill("input[name=token]", customer)
    await page.click("#login button[type=submit]")
    assert "this token's role is 'customer'" in await page.inner_text("#login-error")
    assert [c for c in await page.context.cookies() if c["name"] == "closeloop_session"] == []

    # A signed-in auditor: the cookie reads the console's pages, is HttpOnly and strict, and is no key
    # to the API's commands (those still need the Authorization header).
    auditor = await stack.tokens.token("olga", "auditor")
    await page.fill("input[name=token]", auditor)
    async with page.expect_navigation():
        await page.click("#login button[type=submit]")
    [cookie] = [c for c in await page.context.cookies() if c["name"] == "closeloop_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    async with httpx.AsyncClient(timeout=20, cookies={"closeloop_session": auditor}) as http:
        assert (await http.get(f"{projector}/console/data")).status_code == 200
        r = await http.post(f"{projector}/reconciliations", json={})
        assert r.status_code == 401, r.text
    async with httpx.AsyncClient(timeout=20) as http:
        r = await http.get(f"{projector}/console/data")
        assert r.status_code == 401 and "no bearer token" in r.json()["error"]["message"], r.text
        r = await http.get(f"{projector}/console", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=%2Fconsole")
    # Signing out forgets the session: the console asks to sign in again.
    async with page.expect_navigation():
        await page.click("text=登出 sign out")
    await page.goto(f"{projector}/console")
    assert "/console/login" in page.url
