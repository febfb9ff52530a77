"""The whole platform as separate processes (relay, orders, projector) on the session's
PostgreSQL and Kafka, exactly as `make run` starts them. Package-scoped: it stops when
the end-to-end tests are done. Every API needs a bearer token: `stack.auth` (tests/support/auth.py),
attached to every client, sends the token of the identity a request names in X-Actor / X-Role."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.auth.client import ActorAuth, ActorTokens
from libs.devstack.client import PaymentsFeed, PlatformClient
from libs.devstack.procs import free_port
from libs.devstack.supervisor import SERVICES, Child, _wait_ready
from tests.support.auth import TEST_SECRET_KEY, actor_auth, actor_tokens

WEBHOOK_SECRET = "whsec_e2e_current_" + uuid.uuid4().hex
OLD_WEBHOOK_SECRET = "whsec_e2e_previous_" + uuid.uuid4().hex  # still accepted: a rotation in progress


@dataclass
class Stack:
    children: dict[str, Child]
    env: dict[str, str]
    logs: Path
    kafka_bootstrap: str
    pg_dsn: str
    prefix: str
    tokens: ActorTokens
    auth: ActorAuth

    def url(self, name: str) -> str:
        return self.children[name].url


def start_child(name: str, env: dict[str, str], logs: Path, **extra: str) -> Child:
    port = free_port()
    child = Child(name, port, {**env, "CLOSELOOP_HTTP_PORT": str(port), **extra}, logs / f"{name}-{port}.log")
    child.start()
    _wait_ready(child, timeout=60)
    return child


@pytest.fixture(scope="package")
def stack(pg_dsn: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    prefix = f"e2e{uuid.uuid4().hex[:6]}-"
    env = {**os.environ, "DATABASE_URL": pg_dsn, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "CLOSELOOP_ENVIRONMENT": "test", "CLOSELOOP_INSTANCE_PREFIX": prefix,
           "CLOSELOOP_RELAY_NAME": f"{prefix}relay", "CLOSELOOP_RELAY_START": "head", "PYTHONUNBUFFERED": "1",
           "CLOSELOOP_SECRET_KEY": TEST_SECRET_KEY,  # the test environment refuses the default secret
           "CLOSELOOP_STRIPE_WEBHOOK_SECRETS": f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}"}
    children: dict[str, Child] = {}
    try:
        for name in SERVICES:
            children[name] = start_child(name, env, logs)
        tokens = actor_tokens(pg_dsn)
        yield Stack(children, env, logs, kafka_bootstrap, pg_dsn, prefix, tokens, actor_auth(tokens))
    finally:
        for child in reversed(list(children.values())):
            child.stop()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[PlatformClient]:
    c = PlatformClient(stack.url("orders"), stack.url("projector"), auth=stack.auth)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture(scope="package")
async def feed(stack: Stack) -> AsyncIterator[PaymentsFeed]:
    f = PaymentsFeed(stack.kafka_bootstrap)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture(scope="package", autouse=True)
async def _close_test_tokens(stack: Stack) -> AsyncIterator[None]:
    yield
    await stack.tokens.aclose()
