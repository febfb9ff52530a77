"""Target 6 (bench/targets.py `upstream_kafka`) paired: the payments service of two code trees, alternating,
each run on a fresh database of one embedded PostgreSQL (fsync on) and a fresh Tansu broker, so that both
see the same load. Prints one JSON line per run (rate, load, the service's CPU per message).

    git archive <commit> | tar -x -C /tmp/before
    python -m bench.upstream_pair /tmp/before [this tree]     # ORDERS=600 ROUNDS=2 by default
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import targets
from libs.devstack.kafka import EmbeddedKafka
from libs.devstack.postgres import EmbeddedPostgres
from libs.devstack.procs import free_port

ORDERS = int(os.environ.get("ORDERS", "600"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_service(root: str, env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """The payments service of `root`, once its /readyz answers 200 (the consumer group joined)."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.payments"], cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.terminate()
            raise RuntimeError(f"the payments service of {root} did not get ready (log {log_path})")
        time.sleep(0.3)


async def one(pg: EmbeddedPostgres, label: str, root: str, work: Path) -> dict[str, Any]:
    name = f"pair_{label}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(pg.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = pg.dsn.rsplit("/", 1)[0] + "/" + name
    kafka = EmbeddedKafka(log_path=work / f"kafka-{name}.log")
    kafka.start()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "CLOSELOOP_ENVIRONMENT": "test", "CLOSELOOP_LOG_LEVEL": os.environ.get("SERVICE_LOG_LEVEL", "WARNING"),
           "CLOSELOOP_SECRET_KEY": "pair-" + uuid.uuid4().hex, "CLOSELOOP_HTTP_PORT": str(port),
           "CLOSELOOP_STRIPE_WEBHOOK_SECRETS": "whsec_pair_" + uuid.uuid4().hex,
           "CLOSELOOP_RECONCILE_ENABLED": "false", "PYTHONPATH": root}
    try:
        proc = _start_service(root, env, port, work / f"payments-{name}.log")
        try:
            cpu = _cpu_seconds(proc.pid)
            res = await targets.upstream_kafka(dsn, kafka.bootstrap, ORDERS, seed=1)
            res["service_cpu_s"] = round(_cpu_seconds(proc.pid) - cpu, 2)
            res["service_cpu_ms_per_message"] = round(res["service_cpu_s"] * 1000 / res["messages"], 2)
            return res
        finally:
            proc.terminate()
            proc.wait(20)
    finally:
        kafka.stop()


async def main(roots: dict[str, str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="closeloop-upstream-pair-"))
    pg = EmbeddedPostgres(work / "pg", fsync=True)
    pg.start()
    try:
        labels = list(roots)
        for r in range(ROUNDS):
            for label in (labels if r % 2 == 0 else labels[::-1]):
                res = await one(pg, label, roots[label], work)
                print(json.dumps({"tree": label, **res}), flush=True)
    finally:
        pg.stop()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    here = str(Path(__file__).resolve().parent.parent)
    asyncio.run(main({"before": sys.argv[1], "after": sys.argv[2] if len(sys.argv) > 2 else here}))
