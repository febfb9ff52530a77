"""Read side: messages (the outbox rows and their stream's history) and SLA clocks with the ETA."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from libs.domain.errors import NotFound, RuleViolation
from libs.domain.events import registry
from libs.eventstore import EventStore
from services.notifications.application import subjects
from services.notifications.domain.notification import Notification
from services.notifications.domain.sla import STAGES, SlaClock, SlaPolicy


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _encode_cursor(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), key])).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, key = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(at), str(key)
    except Exception:
        raise RuleViolation("cursor", "must be the next_cursor of a previous page") from None


def notification_row(r: asyncpg.Record) -> dict[str, Any]:
    return {"notification_id": r["notification_id"], "status": r["status"], "audience": r["audience"],
            "recipient": r["recipient"], "address": r["address"], "channel": r["channel"], "locale": r["locale"],
            "template": r["template"], "subject_type": r["subject_type"], "subject_id": r["subject_id"],
            "stage": r["stage"], "source_event_type": r["source_event_type"], "source_id": r["source_id"],
            "dedupe_key": r["dedupe_key"], "title": r["title"], "body": r["body"], "attempts": r["attempts"],
            "max_attempts": r["max_attempts"], "next_attempt_at": _iso(r["next_attempt_at"]),
            "last_error": r["last_error"], "created_at": _iso(r["created_at"]), "sent_at": _iso(r["sent_at"]),
            "version": r["version"]}


def clock_row(r: asyncpg.Record, now: datetime) -> dict[str, Any]:
    running = r["stopped_at"] is None
    late = bool(r["late"] or r["breached_at"] is not None or (running and now >= r["due_at"]))
    return {"subject_type": r["subject_type"], "subject_id": r["subject_id"], "stage": r["stage"],
            "sla_seconds": r["sla_seconds"], "started_at": _iso(r["started_at"]), "due_at": _iso(r["due_at"]),
            "stopped_at": _iso(r["stopped_at"]), "running": running, "breached": late,
            "breach_warned_at": _iso(r["breached_at"])}


@dataclass
class Queries:
    store: EventStore
    sla: SlaPolicy
    clock: Callable[[], datetime]

    async def notifications(self, *, recipient: str | None = None, subject_id: str | None = None,
                            status: str | None = None, channel: str | None = None, limit: int = 50,
                            cursor: str | None = None) -> dict[str, Any]:
        """Messages, newest first (keyset paging)."""
        after = _decode_cursor(cursor) if cursor else None
        rows = await self.store.pool.fetch(
            """SELECT * FROM notifications
                WHERE ($1::text IS NULL OR recipient = $1) AND ($2::text IS NULL OR subject_id = $2)
                  AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR channel = $4)
                  AND ($5::timestamptz IS NULL OR (created_at, notification_id) < ($5, $6))
                ORDER BY created_at DESC, notification_id DESC LIMIT $7""",
            recipient, subject_id, status, channel, after[0] if after else None, after[1] if after else None,
            limit + 1)
        last = rows[limit - 1] if len(rows) > limit else None
        return {"items": [notification_row(r) for r in rows[:limit]],
                "next_cursor": _encode_cursor(last["created_at"], last["notification_id"]) if last else None}

    async def notification(self, notification_id: str) -> dict[str, Any]:
        """One message: rendered title and body, channel, locale, attempts, status and its history."""
        row = await self.store.pool.fetchrow("SELECT * FROM notifications WHERE notification_id = $1",
                                             notification_id)
        if row is None:
            raise NotFound(f"notification {notification_id} not found", notification_id=notification_id)
        events = await self.store.read_stream(Notification.stream_id_for(notification_id))
        view = notification_row(row)
        view["history"] = [{"event_type": e.event_type, "stream_version": e.stream_version,
                            "recorded_at": e.recorded_at.isoformat(), "actor": e.metadata.get("actor"),
                            **{k: v for k, v in e.data.items() if k in ("attempt", "attempts", "error", "permanent",
                                                                          "next_attempt_at", "sender", "reason",
                                                                          "at")}}
                           for e in events]
        return view

    async def slas(self, *, breached: bool | None = None, subject_id: str | None = None, stage: str | None = None,
                   limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """Stage clocks, newest first. breached=true: stopped late, warned, or running past due."""
        now = self.clock()
        after = _decode_cursor(cursor) if cursor else None
        rows = await self.store.pool.fetch(
            """SELECT * FROM notifications_sla_clocks
                WHERE ($1::boolean IS NULL OR $1 = (late OR breached_at IS NOT NULL
                                                    OR (stopped_at IS NULL AND due_at <= $2)))
                  AND ($3::text IS NULL OR subject_id = $3) AND ($4::text IS NULL OR stage = $4)
                  AND ($5::timestamptz IS NULL OR (started_at, subject_id || ':' || stage) < ($5, $6))
                ORDER BY started_at DESC, subject_id || ':' || stage DESC LIMIT $7""",
            breached, now, subject_id, stage, after[0] if after else None, after[1] if after else None, limit + 1)
        last = rows[limit - 1] if len(rows) > limit else None
        return {"items": [clock_row(r, now) for r in rows[:limit]],
                "next_cursor": _encode_cursor(last["started_at"], f"{last['subject_id']}:{last['stage']}")
                if last else None}

    async def subject_sla(self, subject_id: str) -> dict[str, Any]:
        """The SLA of every stage of one subject, its current stage and its ETA."""
        now = self.clock()
        events = await self.store.read_stream(SlaClock.stream_id_for(subject_id))
        if not events:
            raise NotFound(f"no SLA clock for {subject_id}", subject_id=subject_id)
        clock = SlaClock.rehydrate(subject_id, (registry.decode(e.event_type, e.schema_version, e.data)
                                                for e in events))
        subject = await subjects.get(self.store.pool, subject_id)
        eta = clock.eta(self.sla, now, subject.carrier_eta if subject else None)
        current = clock.current
        stages = []
        for stage in STAGES:
            c = clock.clocks.get(stage)
            entry: dict[str, Any] = {"stage": stage, "sla_seconds": int(self.sla.sla(stage).total_seconds())}
            if c is not None:
                entry.update(started_at=_iso(c.started_at), due_at=_iso(c.due_at), stopped_at=_iso(c.stopped_at),
                             running=c.running, breached=c.is_late(now), breach_warned_at=_iso(c.breached_at))
            stages.append(entry)
        return {"subject_type": clock.subject_type, "subject_id": subject_id,
                "current_stage": current.stage if current and current.running else None,
                "ended_at": _iso(clock.ended_at), "end_reason": clock.end_reason,
                "breached": clock.breached(now), "eta": _iso(eta.at), "eta_source": eta.source,
                "carrier_eta": _iso(subject.carrier_eta) if subject else None, "stages": stages,
                "version": clock.version}
