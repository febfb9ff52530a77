"""A Kafka message's body (bytes) is decoded by a fast parser when that gives what the checked decoder gives
(services/payments/domain/upstream.py `_loads_fast`): the stored evidence and every refusal must be exactly
those of the checked path, which a body given as text still takes."""

from __future__ import annotations

import asyncio
import gc
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.payments.application.upstream import UpstreamIngestor
from services.payments.domain.upstream import MalformedEvent, parse_event
from services.payments.domain.upstream_events import ReceivedVia
from tests.unit.payments_upstream import charge, event


def body_with(extra: str) -> bytes:
    """A charge.succeeded event with `extra` spliced in as raw JSON text (keys "x"...)."""
    text = json.dumps(event("charge.succeeded", charge()))
    return (text[:-1] + ", " + extra + "}").encode()


def outcome(raw: bytes | str) -> Any:
    try:
        return "payload", parse_event(raw).payload
    except MalformedEvent as exc:
        return "refused", exc.field, exc.message


@pytest.mark.parametrize("extra", [
    '"x": 123456789012345678901234567890',  # beyond 64 bits: kept exact, not a float
    '"x": -9223372036854775809',
    '"x": 0.1, "y": 1e400, "z": NaN',
    '"x": "caf\\u00e9 \\ud83d\\ude00 \u5fe0\u5b5d"',  # escapes, a surrogate pair, raw UTF-8
    '"x": 1, "x": 2',  # the last of duplicate keys
    '"x": ' + "[" * 31 + "1" + "]" * 31,  # as deep as allowed
])
def test_a_body_is_stored_exactly_as_the_checked_decoder_reads_it(extra: str) -> None:
    raw = body_with(extra)
    kind, payload = outcome(raw)
    assert kind == "payload"
    assert json.dumps(payload) == json.dumps(json.loads(raw.decode()))  # values, types and key order
    assert json.dumps(outcome(raw)) == json.dumps(outcome(raw.decode()))  # bytes (fast) == text (checked); NaN


@pytest.mark.parametrize(("extra", "field"), [
    ('"x": "a\\u0000b"', "x"),  # PostgreSQL cannot store a NUL
    ('"x": "\\udc00"', "x"),  # a lone surrogate
    ('"x": ' + "[" * 40 + "]" * 40, "x"),  # deeper than 32 levels
    ('"x": 1,', "body"),  # not JSON
])
def test_a_body_the_store_cannot_keep_is_refused_naming_the_field_as_before(extra: str, field: str) -> None:
    raw = body_with(extra)
    kind, got, _ = outcome(raw)
    assert kind == "refused" and got.split("[")[0].split(".")[0] == field
    assert outcome(raw) == outcome(raw.decode())


def test_the_garbage_collector_is_on_again_after_a_batch_even_one_that_fails() -> None:
    class Broken:
        def transaction(self) -> Any:
            raise ConnectionError("database gone")

    ingestor = UpstreamIngestor(Broken(), lambda: datetime(2026, 12, 1, tzinfo=UTC))  # type: ignore[arg-type]
    assert gc.isenabled()
    with pytest.raises(ConnectionError):
        asyncio.run(ingestor.ingest_batch([body_with('"x": 1')], via=ReceivedVia.KAFKA))
    assert gc.isenabled()
