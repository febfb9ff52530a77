"""Senders: where a message goes once the dispatcher takes it from the outbox.

`Sender` is the interface (one coroutine, `send`, that raises `SendError` on failure; permanent
failures, e.g. an address the provider refuses, are not retried). The default `SinkSender` writes
each sent message to a local sink that tests and the demo read: the table `notifications_sink`
(one row per notification id; a repeated send of the same notification increments `deliveries`)
and, when a directory is configured, a JSON line per send in `{directory}/{channel}.jsonl`.
Sending is at-least-once (see application/dispatcher.py): the sink dedupes by notification id.
An SMTP or SMS gateway sender would implement the same interface.

`FaultInjectingSender` wraps a sender and fails chosen sends: the `sender_fail_first` setting and
`POST /senders/fail-next` (test environment only) use it to prove the retries.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson


@dataclass(frozen=True)
class OutgoingMessage:
    notification_id: str
    channel: str
    recipient: str
    address: str
    locale: str
    template: str
    subject_id: str
    title: str
    body: str
    attempt: int


class SendError(Exception):
    """The message was not sent. `permanent`: trying again cannot help (it is given up at once)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sender(Protocol):
    name: str

    async def send(self, message: OutgoingMessage) -> None:
        """Deliver the message or raise SendError. Must tolerate the same notification id twice."""
        ...


class SinkSender:
    """The default sender: the local sink (a table and/or JSONL files)."""

    name = "sink"

    def __init__(self, pool: asyncpg.Pool | None, *, directory: Path | None = None, table: bool = True) -> None:
        if table and pool is None:
            raise ValueError("the sink table needs a database pool")
        if not table and directory is None:
            raise ValueError("the sink needs a table or a directory")
        self.pool = pool
        self.directory = directory
        self.table = table
        self._file_lock = asyncio.Lock()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    async def send(self, message: OutgoingMessage) -> None:
        if self.table:
            assert self.pool is not None
            await self.pool.execute(
                """INSERT INTO notifications_sink (notification_id, channel, recipient, address, locale, template,
                                                   subject_id, title, body)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                   ON CONFLICT (notification_id) DO UPDATE
                     SET deliveries = notifications_sink.deliveries + 1, last_sent_at = now()""",
                message.notification_id, message.channel, message.recipient, message.address, message.locale,
                message.template, message.subject_id, message.title, message.body)
        if self.directory is not None:
            line = orjson.dumps(asdict(message)) + b"\n"
            path = self.directory / f"{message.channel}.jsonl"
            async with self._file_lock:
                await asyncio.to_thread(_append, path, line)


def _append(path: Path, line: bytes) -> None:
    with path.open("ab") as f:
        f.write(line)


def read_sink_files(directory: Path) -> list[dict[str, Any]]:
    """Every line of the JSONL sink, deduplicated by notification id (the first send of each)."""
    seen: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                record = orjson.loads(line)
                seen.setdefault(record["notification_id"], record)
    return list(seen.values())


@dataclass
class FailureRule:
    remaining: int
    recipient: str | None = None
    channel: str | None = None
    permanent: bool = False
    error: str = "injected sender failure"

    def matches(self, message: OutgoingMessage) -> bool:
        return self.remaining > 0 and (self.recipient is None or self.recipient == message.recipient) and \
            (self.channel is None or self.channel == message.channel)


class FaultInjectingSender:
    """Fails the next sends that match a rule, then delegates to the wrapped sender."""

    def __init__(self, inner: Sender, *, fail_first: int = 0) -> None:
        self.inner = inner
        self.name = inner.name
        self.rules: list[FailureRule] = [FailureRule(fail_first)] if fail_first > 0 else []
        self.injected = 0

    def fail_next(self, count: int, *, recipient: str | None = None, channel: str | None = None,
                  permanent: bool = False, error: str = "injected sender failure") -> FailureRule:
        rule = FailureRule(count, recipient, channel, permanent, error)
        self.rules.append(rule)
        return rule

    async def send(self, message: OutgoingMessage) -> None:
        for rule in self.rules:
            if rule.matches(message):
                rule.remaining -= 1
                self.injected += 1
                self.rules = [r for r in self.rules if r.remaining > 0]
                raise SendError(f"{rule.error} (attempt {message.attempt})", permanent=rule.permanent)
        await self.inner.send(message)
