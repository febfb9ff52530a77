"""Small helpers for child processes that must never outlive their parent."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """preexec_fn for Popen: the kernel sends `sig` to the child when the parent dies,
    even by kill -9. Runs after the uid switch, so it survives `user=`."""

    def _set() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return _set


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout):
        return True
    return False


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               alive: Callable[[], bool] = lambda: True, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not alive():
            raise RuntimeError(f"{what}: the process exited while starting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not become ready within {timeout:.0f} s")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15, sig: int = signal.SIGTERM) -> None:
    """Ask a child to stop with `sig`, and kill it if it has not exited after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
