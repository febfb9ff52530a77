"""`make run`: the whole platform on one machine, under one supervisor.

Starts the embedded PostgreSQL (data kept in .closeloop/pgdata unless --fresh) and the
Tansu broker (memory only), then the relay, orders and projector as separate
processes, restarts a process that dies, runs the demo from the seed, writes the
endpoints to .closeloop/dev.json, and on Ctrl-C (or SIGTERM) stops every process it
started. Each child also gets PR_SET_PDEATHSIG, so even a kill -9 of the supervisor
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from libs.devstack.kafka import EmbeddedKafka
from libs.devstack.postgres import EmbeddedPostgres
from libs.devstack.procs import die_with_parent, free_port, stop_process
from libs.settings import DEV_SECRET
from services.shipping.bootstrap import DEV_CARRIER_SECRET

console = Console()
ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CLOSELOOP_STATE_DIR") or ROOT / ".closeloop")

# The processes of the platform, started in this order (a service whose package has no
# __main__ yet is not started: the after-sales services land one by one).
SERVICES = [name for name in ("relay", "orders", "projector", "payments", "rma", "shipping", "notifications")
            if (ROOT / "services" / name / "__main__.py").exists()]


@dataclass
class Child:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], cwd=ROOT,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=die_with_parent(signal.SIGTERM))
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        stop_process(self.proc, timeout)


def _wait_ready(child: Child, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not child.alive():
            tail = child.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{child.name} exited during start-up; log tail:\n{tail}")
        try:
            r = httpx.get(f"{child.url}/readyz", timeout=1)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{child.name} not ready after {timeout:.0f} s: {last}")


class Supervisor:
    def __init__(self, fresh: bool, demo: bool) -> None:
        self.fresh = fresh
        self.demo = demo
        self.pg: EmbeddedPostgres | None = None
        self.kafka: EmbeddedKafka | None = None
        self.children: list[Child] = []
        self.stopping = False
        self.tokens: dict[str, dict[str, object]] = {}
        # The services' secret key (they inherit this environment): development's default unless set.
        self.secret_key = os.environ.get("CLOSELOOP_SECRET_KEY") or DEV_SECRET

    @property
    def webhook_secret(self) -> str:
        """The Stripe webhook signing secret of this dev stack: made once, kept in .closeloop/."""
        path = STATE / "stripe_webhook_secret"
        if not path.exists():
            path.write_text("whsec_" + secrets.token_hex(24) + "\n")
            path.chmod(0o600)
        return path.read_text().strip()

    def start(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        logs = STATE / "logs"
        logs.mkdir(exist_ok=True)
        if self.fresh and (STATE / "pgdata").exists():
            console.print("[yellow]--fresh: removing .closeloop/pgdata[/]")
            shutil.rmtree(STATE / "pgdata")
        t0 = time.monotonic()
        self.pg = EmbeddedPostgres(STATE / "pgdata", log_path=logs / "postgres.log")
        self.pg.start()
        console.print(f"PostgreSQL   {self.pg.dsn}   [dim]({time.monotonic() - t0:.1f} s)[/]")
        t0 = time.monotonic()
        self.kafka = EmbeddedKafka(log_path=logs / "kafka.log")
        self.kafka.start()
        console.print(f"Kafka (Tansu) {self.kafka.bootstrap}   [dim]({time.monotonic() - t0:.1f} s)[/]")
        base_env = {**os.environ, "DATABASE_URL": self.pg.dsn, "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
                    "CLOSELOOP_ENVIRONMENT": "development", "PYTHONUNBUFFERED": "1",
                    "CLOSELOOP_STRIPE_WEBHOOK_SECRETS": self.webhook_secret}
        for name in SERVICES:
            port = free_port()
            child = Child(name, port, {**base_env, "CLOSELOOP_HTTP_PORT": str(port)}, logs / f"{name}.log")
            child.start()
            self.children.append(child)
        for child in self.children:
            t0 = time.monotonic()
            _wait_ready(child)
            console.print(f"{child.name:<12} {child.url}   [dim]ready in {time.monotonic() - t0:.1f} s[/]")
        from libs.devstack.demo_tokens import issue_demo_tokens

        self.tokens = asyncio.run(issue_demo_tokens(self.pg.dsn, self.secret_key))
        self.write_endpoints()

    def endpoints(self) -> dict[str, object]:
        assert self.pg and self.kafka
        return {
            "postgres_url": self.pg.dsn,
            "kafka_bootstrap_servers": self.kafka.bootstrap,
            "services": {c.name: c.url for c in self.children},
            "docs": {c.name: f"{c.url}/docs" for c in self.children if c.name != "relay"},
            "stripe_webhook_secret": self.webhook_secret,
            "stripe_webhook_url": next(
                (f"{c.url}/webhooks/stripe" for c in self.children if c.name == "payments"), None),
            # shipping runs with its development secrets (refused in production): carriers sign their
            # tracking webhooks (X-Carrier-Signature: sha256=<HMAC of the body>) with this one.
            "carrier_webhook_secret": DEV_CARRIER_SECRET,
            "tracking_page": next((f"{c.url}/track/{{tracking number or RMA id}}/page" for c in self.children
                                   if c.name == "shipping"), None),
            # The operations console: sign in at console_login with a reconciler's, approver's, importer's,
            # staff or auditor token (a session cookie then opens its pages).
            "console": next((f"{c.url}/console" for c in self.children if c.name == "projector"), None),
            "console_login": next((f"{c.url}/console/login" for c in self.children if c.name == "projector"), None),
            # One bearer token per role (Authorization: Bearer <token>), revoked at the next start.
            "tokens": self.tokens,
            "logs": str(STATE / "logs"),
            "pids": {c.name: c.proc.pid for c in self.children if c.proc},
        }

    def write_endpoints(self) -> None:
        (STATE / "dev.json").write_text(json.dumps(self.endpoints(), indent=2) + "\n")

    def watch(self) -> None:
        """Restart a child that died (at most 5 times a minute), until asked to stop."""
        while not self.stopping:
            for child in self.children:
                if not child.alive() and not self.stopping:
                    now = time.monotonic()
                    child.restarts = [t for t in child.restarts if now - t < 60]
                    if len(child.restarts) >= 5:
                        console.print(f"[red]{child.name} keeps dying; see {child.log_path}[/]")
                        continue
                    console.print(f"[yellow]{child.name} exited (rc={child.proc.returncode if child.proc else '?'});"
                                  " restarting[/]")
                    child.restarts.append(now)
                    child.start()
                    self.write_endpoints()
            time.sleep(0.5)

    def stop(self) -> None:
        self.stopping = True
        for child in reversed(self.children):
            child.stop()
        if self.kafka:
            self.kafka.stop()
        if self.pg:
            self.pg.stop()
        with contextlib.suppress(FileNotFoundError):
            (STATE / "dev.json").unlink()


def _summary(sup: Supervisor, demo_result: dict | None) -> None:
    table = Table(title="closeloop is running", show_lines=False)
    table.add_column("what")
    table.add_column("where")
    for c in sup.children:
        table.add_row(c.name, c.url + ("" if c.name == "relay" else "   (API docs: /docs)"))
    assert sup.pg and sup.kafka
    table.add_row("kafka", sup.kafka.bootstrap)
    table.add_row("postgres", sup.pg.dsn)
    table.add_row("endpoints file", str(STATE / "dev.json"))
    projector = next((c.url for c in sup.children if c.name == "projector"), None)
    if projector:
        table.add_row("operations console", f"{projector}/console   (sign in with the reconciler's or auditor's "
                                             "token below)")
    console.print(table)
    tokens = Table(title="demo tokens, one per role (Authorization: Bearer <token>; also in dev.json)")
    for col in ("role", "actor", "token"):
        tokens.add_column(col, overflow="fold")
    for role, t in sup.tokens.items():
        tokens.add_row(role, str(t["actor"]), str(t["token"]))
    console.print(tokens)
    if demo_result:
        for table in demo_result.get("tables") or [demo_result]:
            console.print(table)
        for name, url in (demo_result.get("links") or {}).items():
            console.print(f"  {name}: {url}")


app = typer.Typer(add_completion=False, help="closeloop development stack")


@app.command()
def up(fresh: bool = typer.Option(False, "--fresh", help="wipe .closeloop/pgdata first"),
       demo: bool = typer.Option(True, "--demo/--no-demo", help="run the seed demo after start-up"),
       exit_after_demo: bool = typer.Option(False, "--exit-after-demo",
                                            help="stop everything after the demo (for scripts and tests)")) -> None:
    """Start PostgreSQL, Kafka, relay, orders and projector; run the demo; wait for Ctrl-C."""
    sup = Supervisor(fresh, demo)

    def _on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts `make run` in the background ignores SIGINT in it, and a Ctrl-C sent to
    # the process group would then stop the children (postgres, the services) but not this supervisor.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    rc = 0
    try:
        sup.start()
        result = None
        if demo:
            from libs.devstack.demo import run_demo

            result = asyncio.run(run_demo(sup.endpoints(), sup.secret_key))
        _summary(sup, result)
        if exit_after_demo:
            return
        console.print("[bold]Press Ctrl-C to stop every process.[/]")
        sup.watch()
    except KeyboardInterrupt:
        console.print("\nstopping…")
    except Exception as exc:
        console.print(f"[red]start-up failed: {exc}[/]")
        rc = 1
    finally:
        sup.stop()
        console.print("all processes stopped.")
    raise typer.Exit(rc)


@app.command()
def status() -> None:
    """Print the endpoints of the running stack (from .closeloop/dev.json)."""
    path = STATE / "dev.json"
    if not path.exists():
        console.print("not running (no .closeloop/dev.json)")
        raise typer.Exit(1)
    console.print_json(path.read_text())


def cli() -> None:
    app()
