"""The CLI's arguments: times need an offset (the same moment on every machine), the database is
found in the usual places, and a password never reaches a manifest or a message."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from libs.cli import db
from libs.cli.db import CliError, parse_time, redact, resolve_dsn
from libs.eventstore.audit import EventFilter


def test_times_need_a_utc_offset() -> None:
    assert parse_time("2025-03-10T09:00:00+08:00", "--as-of") == datetime(2025, 3, 10, 1, 0, tzinfo=UTC)
    assert parse_time("2025-03-10T01:00:00Z", "--as-of") == datetime(2025, 3, 10, 1, 0, tzinfo=UTC)
    assert parse_time("2025-03-10T09:00:00.123456+08:00", "--to") == datetime(
        2025, 3, 10, 9, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8)))
    assert parse_time(None, "--from") is None
    now = parse_time("now", "--as-of")
    assert now is not None and abs(now - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(CliError, match="no UTC offset"):
        parse_time("2025-03-10T09:00:00", "--as-of")
    with pytest.raises(CliError, match="no UTC offset"):
        parse_time("2025-03-10", "--from")
    with pytest.raises(CliError, match="not an ISO 8601 time"):
        parse_time("yesterday", "--to")


def test_the_database_comes_from_the_option_the_environment_or_the_running_stack(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CLOSELOOP_DATABASE_URL", raising=False)
    monkeypatch.setattr(db, "DEV_JSON", tmp_path / "dev.json")
    with pytest.raises(CliError, match="no database"):
        resolve_dsn(None)
    (tmp_path / "dev.json").write_text(json.dumps({"postgres_url": "postgresql://stack/db"}))
    assert resolve_dsn(None) == "postgresql://stack/db"
    monkeypatch.setenv("CLOSELOOP_DATABASE_URL", "postgresql://closeloop/db")
    assert resolve_dsn(None) == "postgresql://closeloop/db"
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/db")
    assert resolve_dsn(None) == "postgresql://env/db"
    assert resolve_dsn("postgresql://option/db") == "postgresql://option/db"


def test_a_password_is_never_shown() -> None:
    assert redact("postgresql://auditor:s3cret@db:5432/closeloop") == "postgresql://auditor:***@db:5432/closeloop"
    assert redact("postgresql://auditor@db/closeloop") == "postgresql://auditor@db/closeloop"


def test_filters_are_parameters_never_sql_text() -> None:
    args: list[object] = []
    flt = EventFilter(stream_prefix="order-'; DROP TABLE events; --", actor="merchant:*_100%", role="merchant",
                      from_time=datetime(2025, 1, 1, tzinfo=UTC))
    where = flt.where(args)
    assert "DROP TABLE" not in where and "_100" not in where
    assert args == ["order-'; DROP TABLE events; --", datetime(2025, 1, 1, tzinfo=UTC), "merchant:%\\_100\\%",
                    "merchant"]
    assert EventFilter().where([]) == "true"
