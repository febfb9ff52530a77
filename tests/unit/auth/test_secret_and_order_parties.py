"""Who may run an order command (the orders domain's party rules), and the settings that refuse the
default secret outside development, in the settings and in a service process (no database)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.settings import DEV_SECRET, ServiceSettings
from services.orders.domain.access import CUSTOMER, MERCHANT, PARTY, STAFF, Forbidden, require_canceller, require_party

ROOT = Path(__file__).resolve().parents[3]


def test_an_order_command_is_for_its_own_customer_or_merchant_or_staff() -> None:
    require_party("customer", "c-1", action="x", roles=CUSTOMER, customer_id="c-1")
    require_party("merchant", "m-1", action="x", roles=MERCHANT, merchant_id="m-1")
    for role in STAFF:
        require_party(role, "ops", action="x", roles=PARTY, customer_id="c-1", merchant_id="m-1")
    with pytest.raises(Forbidden) as wrong_customer:
        require_party("customer", "c-2", action="confirm this order's bill", roles=CUSTOMER, customer_id="c-1")
    assert wrong_customer.value.field == "X-Actor" and "c-1" not in wrong_customer.value.rule  # no leak
    with pytest.raises(Forbidden) as wrong_role:
        require_party("merchant", "m-1", action="place an order", roles=CUSTOMER, customer_id="m-1")
    assert wrong_role.value.field == "X-Role"
    with pytest.raises(Forbidden, match="cancels as the customer"):
        require_canceller("customer", "platform")
    require_canceller("platform", "customer")  # staff cancel on anyone's behalf


@pytest.mark.parametrize("environment", ["test", "production"])
def test_the_default_secret_is_refused_outside_development(environment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOSELOOP_SECRET_KEY", raising=False)
    monkeypatch.setenv("CLOSELOOP_ENVIRONMENT", environment)
    with pytest.raises(ValidationError, match=f"CLOSELOOP_SECRET_KEY must be set in {environment}"):
        ServiceSettings()
    monkeypatch.setenv("CLOSELOOP_SECRET_KEY", "short")
    with pytest.raises(ValidationError, match="at least 16 characters"):
        ServiceSettings()
    monkeypatch.setenv("CLOSELOOP_SECRET_KEY", "a-real-secret-of-enough-length")
    assert ServiceSettings().secret_key == "a-real-secret-of-enough-length"


def test_development_runs_on_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOSELOOP_SECRET_KEY", raising=False)
    monkeypatch.setenv("CLOSELOOP_ENVIRONMENT", "development")
    assert ServiceSettings().secret_key == DEV_SECRET


@pytest.mark.parametrize("environment", ["test", "production"])
def test_a_service_refuses_to_start_on_the_default_secret(environment: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "CLOSELOOP_ENVIRONMENT": environment, "PYTHONPATH": str(ROOT),
           "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}  # never reached: the settings refuse first
    done = subprocess.run([sys.executable, "-m", "services.orders"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert f"CLOSELOOP_SECRET_KEY must be set in {environment}" in done.stderr
