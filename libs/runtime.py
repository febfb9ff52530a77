"""Running a service process: uvicorn plus background loops in one event loop, with
SIGTERM/SIGINT stopping everything cleanly, and logs as JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import orjson
import uvicorn
from fastapi import FastAPI

from libs.observability import correlation_id

Background = Callable[[asyncio.Event], Awaitable[None]]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        cid = correlation_id.get()
        if cid:
            out["correlation_id"] = cid
        if SERVICE_NAME:
            out["service"] = SERVICE_NAME
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # structured fields of the line (log.info(..., extra={"fields": {...}}))
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


SERVICE_NAME = ""


def setup_logging(level: str, service: str) -> None:
    global SERVICE_NAME
    SERVICE_NAME = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "faststream", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# Seconds an idle keep-alive connection stays open. Above what clients keep one for (httpx's default
# keepalive_expiry is 5 s, as was uvicorn's timeout_keep_alive): with equal times a client could send on a
# connection the server was closing at that moment and get a ReadError for a request never processed (seen in
# the full load test at 25 commands/s). Load balancers' idle timeouts (60 s) stay below it too.
KEEP_ALIVE_SECONDS = 75


def http_config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                          timeout_keep_alive=KEEP_ALIVE_SECONDS)


async def serve(app: FastAPI, host: str, port: int, background: list[Background] | None = None) -> None:
    """Serve `app` and run each background loop until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = uvicorn.Server(http_config(app, host, port))
    app.state.stop = stop
    tasks = [asyncio.create_task(server.serve(), name="http")]

    async def _background_after_startup(fn: Background) -> None:
        while not server.started and not stop.is_set():
            await asyncio.sleep(0.02)
        await fn(stop)

    tasks += [asyncio.create_task(_background_after_startup(fn), name=getattr(fn, "__name__", "bg"))
              for fn in background or []]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    for t in done:
        if t is not stopper and t.exception() is not None:
            logging.getLogger("closeloop.runtime").error("task %s failed", t.get_name(), exc_info=t.exception())
    stop.set()
    server.should_exit = True
    for t in tasks:
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(t, 15)
