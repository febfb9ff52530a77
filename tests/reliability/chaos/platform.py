"""The platform under test as real processes that the chaos driver may kill: its own embedded
PostgreSQL and Tansu broker (so that both can be stopped and started again on their ports), and
every service started the way `make run` starts it (libs/devstack/supervisor.py's Child), each
restartable on its port. Every process started here is stopped by its pid."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from libs.devstack.kafka import EmbeddedKafka
from libs.devstack.postgres import EmbeddedPostgres
from libs.devstack.procs import free_port
from libs.devstack.supervisor import SERVICES, Child, _wait_ready
from tests.support.auth import TEST_SECRET_KEY

# The processes the chaos driver kills: the relay, every command service, the consumers and the projector.
KILLABLE = [name for name in SERVICES]


@dataclass
class Events:
    """What the chaos did, for the summary table."""

    kills: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    broker_restarts: int = 0
    db_outage_seconds: float = 0.0
    db_outages: int = 0


class Platform:
    def __init__(self, root: Path | None = None) -> None:
        # Kept after the run (the logs say what happened); the database files are removed by stop().
        self.root = root or Path(tempfile.mkdtemp(prefix="closeloop-chaos-"))
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg = EmbeddedPostgres(self.root / "pgdata", fsync=False, log_path=self.logs / "postgres.log")
        self.kafka = EmbeddedKafka(log_path=self.logs / "tansu.log")
        self.children: dict[str, Child] = {}
        self.events = Events()
        self.prefix = f"rel{uuid.uuid4().hex[:6]}-"
        self.env: dict[str, str] = {}

    # --------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.pg.start()
        self.kafka.start()
        self.env = {**os.environ, "DATABASE_URL": self.pg.dsn, "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
                    "CLOSELOOP_ENVIRONMENT": "test", "CLOSELOOP_INSTANCE_PREFIX": self.prefix,
                    "CLOSELOOP_RELAY_NAME": f"{self.prefix}relay", "PYTHONUNBUFFERED": "1",
                    "CLOSELOOP_SECRET_KEY": TEST_SECRET_KEY, "CLOSELOOP_LOG_LEVEL": "WARNING",
                    "CLOSELOOP_RECONCILE_ENABLED": "false"}
        for name in SERVICES:
            port = free_port()
            child = Child(name, port, {**self.env, "CLOSELOOP_HTTP_PORT": str(port)},
                          self.logs / f"{name}.log")
            child.start()
            self.children[name] = child
        for child in self.children.values():
            _wait_ready(child, timeout=120)

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()
        self.kafka.stop()
        self.pg.destroy()

    def url(self, name: str) -> str:
        return self.children[name].url

    @property
    def dsn(self) -> str:
        return self.pg.dsn

    # ------------------------------------------------------------------------------------ chaos
    def kill(self, name: str) -> None:
        """kill -9 the service's process (by its pid) and wait until it is gone."""
        child = self.children[name]
        assert child.proc is not None
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait(10)
        self.events.kills[name] = self.events.kills.get(name, 0) + 1

    async def restart(self, name: str, timeout: float = 120) -> None:
        """Start the service again on its port and wait until it is ready (bounded). Started from the
        event loop's thread, never a worker thread: PR_SET_PDEATHSIG fires when the *thread* that forked
        the child ends."""
        child = self.children[name]
        child.start()
        await asyncio.to_thread(_wait_ready, child, timeout)
        self.events.restarts[name] = self.events.restarts.get(name, 0) + 1

    def restart_broker(self) -> None:
        """Stop Tansu (kill -9: it keeps nothing on disk, so this is a full loss of topics, messages,
        consumer groups and offsets) and start an empty one on the same port."""
        assert self.kafka.proc is not None
        os.kill(self.kafka.proc.pid, signal.SIGKILL)
        self.kafka.proc.wait(10)
        self.kafka.start()
        self.events.broker_restarts += 1

    def stop_database(self) -> float:
        """Fast shutdown of PostgreSQL (clients' connections are cut); returns the moment it stopped."""
        self.pg.stop()
        return time.monotonic()

    def start_database(self, stopped_at: float) -> None:
        self.pg.start()
        self.events.db_outage_seconds += time.monotonic() - stopped_at
        self.events.db_outages += 1

    # ------------------------------------------------------------------------------------ memory
    def rss(self) -> dict[str, int]:
        """Resident set size (bytes) of each service process."""
        out: dict[str, int] = {}
        for name, child in self.children.items():
            if child.proc is not None and child.proc.poll() is None:
                try:
                    out[name] = psutil.Process(child.proc.pid).memory_info().rss
                except psutil.Error:
                    pass
        return out

    def pids(self) -> dict[str, int]:
        return {n: c.proc.pid for n, c in self.children.items() if c.proc is not None}

    @property
    def relay_name(self) -> str:
        return f"{self.prefix}relay"
