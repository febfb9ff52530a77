"""README's walkthrough is executed against the running stack, so the docs cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import WEBHOOK_SECRET

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- walkthrough:start -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S)
    assert m, "README.md has no walkthrough block"
    return m.group(1)


def test_readme_walkthrough_runs_against_the_stack(stack: Any) -> None:
    env = {**os.environ, "ORDERS": stack.url("orders"), "PROJECTOR": stack.url("projector"),
           "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap, "PAYMENTS": stack.url("payments"),
           "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
           # `closeloop tokens create` issues the walkthrough's tokens on the stack's database and secret.
           "DATABASE_URL": stack.pg_dsn, "CLOSELOOP_SECRET_KEY": stack.env["CLOSELOOP_SECRET_KEY"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert "awaiting_prepayment" in lines
    assert "['push_bill']" in lines or "['adjust_bill', 'confirm_bill']" in lines
    assert "awaiting_payment" in lines and "awaiting_confirmation" in lines and "completed" in lines
    assert '"duplicate":false' in result.stdout  # the webhook answered for the two charges
    assert "OrderCompleted" in result.stdout and "BillAdjusted" in result.stdout
    assert "cancelled" in lines
    # Access control: the token decides who acts (recorded in the history) and what they may see.
    assert any(line.startswith("OrderPlaced by cust-") and line.endswith(" as customer") for line in lines)
    assert {"no token: 401", "another customer: 404", "auditor reads: 200", "auditor cancels: 403",
            "revoked: 401", "revoked"} <= set(lines)
