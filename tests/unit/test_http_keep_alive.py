"""A service never closes an idle keep-alive connection while a client may still reuse it.

With uvicorn's default (5 s) equal to httpx's default keepalive_expiry, a request sent on a connection the
server was closing at that moment failed with a ReadError without ever reaching the service (the full load
test at 25 commands/s, 2026-12-02)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from libs.runtime import http_config


def test_the_servers_keep_alive_outlasts_a_default_clients_and_a_load_balancers() -> None:
    config = http_config(FastAPI(), "127.0.0.1", 0)
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert config.timeout_keep_alive > client_expiry
    assert config.timeout_keep_alive > 60  # common load-balancer idle timeouts (AWS ALB, nginx upstreams)
