"""Session fixtures: one real PostgreSQL and one real Kafka-protocol broker per test run.

Choice, in order: DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS when set; testcontainers when a
Docker daemon answers; otherwise the embedded PostgreSQL and Tansu (see
../shared/notes/infrastructure.md). Tests use random ids instead of truncating tables,
so they can share the database and run against an existing one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

if "XDG_RUNTIME_DIR" not in os.environ:  # platformdirs warns (an error under pytest) without it
    _rt = Path(f"/tmp/xdg-{os.getuid()}")
    _rt.mkdir(exist_ok=True)
    _rt.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(_rt)


def _docker_available() -> bool:
    """A Docker daemon answers (checked only when a socket or DOCKER_HOST exists)."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    if _docker_available():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver=None) as pg:
            yield pg.get_connection_url()
        return
    from libs.devstack.postgres import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="closeloop-test-pg-"))
    server = EmbeddedPostgres(root / "data", fsync=False)
    server.start()
    try:
        yield server.dsn
    finally:
        server.destroy()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if _docker_available():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from libs.devstack.kafka import EmbeddedKafka

    broker = EmbeddedKafka()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
async def store(pg_dsn: str) -> AsyncIterator[object]:
    from libs.eventstore import EventStore

    es = await EventStore.connect(pg_dsn, max_size=20)
    try:
        yield es
    finally:
        await es.close()
