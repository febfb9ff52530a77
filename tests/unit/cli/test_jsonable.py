"""The state serializer: every value an aggregate holds becomes JSON types, exactly (no floats for
money, offsets kept, stable order for sets), and nothing it cannot serialise fails the dump."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from pathlib import PurePosixPath

import orjson
from pydantic import BaseModel

from libs.cli.jsonable import dumps, state_of, to_jsonable
from libs.domain.money import Money
from services.orders.domain.events import OrderStatus
from tests.unit.orders import place

TPE = timezone(timedelta(hours=8))


class Colour(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


class Plain(Enum):
    ONE = (1, "one")


class Line(BaseModel):
    price: Money
    at: datetime
    tags: set[str]


@dataclass
class Clock:
    stage: str
    started: datetime
    _secret: str = "hidden"
    stops: list[datetime] = field(default_factory=list)


class Slotted:
    __slots__ = ("_private", "name")

    def __init__(self) -> None:
        self.name = "slotted"
        self._private = 1


def _only_json_types(value: object) -> None:
    if isinstance(value, dict):
        assert all(type(k) is str for k in value)
        for v in value.values():
            _only_json_types(v)
    elif isinstance(value, list):
        for v in value:
            _only_json_types(v)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)


def test_money_stays_integer_minor_units_and_currency() -> None:
    assert to_jsonable(Money(amount=120000, currency="TWD")) == {"amount": 120000, "currency": "TWD"}
    assert to_jsonable(Money(amount=-5, currency="JPY")) == {"amount": -5, "currency": "JPY"}


def test_times_are_iso_8601_with_their_offset() -> None:
    assert to_jsonable(datetime(2025, 3, 10, 19, 0, tzinfo=TPE)) == "2025-03-10T19:00:00+08:00"
    assert to_jsonable(datetime(2025, 3, 10, 11, 0, 0, 123456, tzinfo=UTC)) == "2025-03-10T11:00:00.123456+00:00"
    assert to_jsonable(date(2025, 3, 10)) == "2025-03-10"
    assert to_jsonable(time(9, 30)) == "09:30:00"
    assert to_jsonable(timedelta(hours=1, minutes=30)) == "PT5400S"
    assert to_jsonable(timedelta(seconds=-2)) == "-PT2S"
    assert to_jsonable(timedelta(milliseconds=1500)) == "PT1.5S"


def test_enums_become_their_plain_value() -> None:
    for value, expected in ((Colour.RED, "red"), (Level.HIGH, 3), (Plain.ONE, [1, "one"]),
                            (OrderStatus.COMPLETED, "completed")):
        out = to_jsonable(value)
        assert out == expected and type(out) is type(expected)


def test_nested_pydantic_models_sets_and_dataclasses() -> None:
    line = Line(price=Money(amount=8000, currency="TWD"), at=datetime(2025, 1, 1, tzinfo=UTC), tags={"b", "a", "c"})
    clock = Clock("processing", datetime(2025, 1, 2, tzinfo=TPE), stops=[datetime(2025, 1, 3, tzinfo=TPE)])
    out = to_jsonable({"line": line, "clock": clock, "frozen": frozenset({3, 1, 2}), "pair": (1, "x")})
    assert out == {
        "line": {"price": {"amount": 8000, "currency": "TWD"}, "at": "2025-01-01T00:00:00+00:00",
                 "tags": ["a", "b", "c"]},
        "clock": {"stage": "processing", "started": "2025-01-02T00:00:00+08:00",
                  "stops": ["2025-01-03T00:00:00+08:00"]},  # _secret is private: not shown
        "frozen": [1, 2, 3],
        "pair": [1, "x"],
    }


def test_keys_scalars_and_odd_values() -> None:
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    out = to_jsonable({Colour.RED: 1, 2: "two", (1, 2): "tuple", uid: Decimal("1.10"), "path": PurePosixPath("/a"),
                       "bytes": b"\x00\x01", "nan": float("nan"), "slotted": Slotted(), "cls": Money})
    assert out == {"red": 1, "2": "two", "[1,2]": "tuple", str(uid): "1.10", "path": "/a", "bytes": "base64:AAE=",
                   "nan": "nan", "slotted": {"name": "slotted"}, "cls": "libs.domain.money.Money"}


def test_a_cycle_or_an_opaque_object_does_not_fail_the_dump() -> None:
    a: dict[str, object] = {}
    a["self"] = a
    assert to_jsonable(a) == {"self": "<cycle: dict>"}
    assert to_jsonable(object()).startswith("<repr: <object object")  # type: ignore[union-attr]


def test_sets_of_models_are_ordered_stably() -> None:
    first = to_jsonable({frozenset({"x", "y"}), frozenset({"a"})})
    second = to_jsonable({frozenset({"a"}), frozenset({"y", "x"})})
    assert first == second == [["a"], ["x", "y"]]


def test_an_aggregates_state_is_its_public_attributes_in_json_types() -> None:
    order = place(required=True)
    order.mark_saved()
    state = state_of(order)
    _only_json_types(state)
    assert list(state)[:3] == ["id", "version", "status"]
    assert "_pending" not in state
    assert state["status"] == "awaiting_prepayment"
    assert state["estimated_total"] == {"amount": order.estimated_total.amount, "currency": "TWD"}  # type: ignore[union-attr]
    assert json.loads(dumps(state)) == state == orjson.loads(orjson.dumps(state))
