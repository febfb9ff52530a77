"""Aggregate base: a pure state machine rebuilt from its events.

A command method checks the current state, then records new events with `_record`,
which applies them immediately (so later checks in the same command see them) and
keeps them as pending until the repository appends them with the version the
aggregate was loaded at (optimistic concurrency).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import ClassVar, Self

from libs.domain.errors import InvalidTransition
from libs.domain.events import DomainEvent


class Aggregate:
    category: ClassVar[str]  # stream id prefix, e.g. "order" -> "order-<id>"

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = 0  # number of stored events applied
        self._pending: list[DomainEvent] = []

    @classmethod
    def stream_id_for(cls, aggregate_id: str) -> str:
        return f"{cls.category}-{aggregate_id}"

    @property
    def stream_id(self) -> str:
        return self.stream_id_for(self.id)

    @classmethod
    def rehydrate(cls, aggregate_id: str, events: Iterable[DomainEvent]) -> Self:
        agg = cls(aggregate_id)
        for event in events:
            agg.apply(event)
            agg.version += 1
        return agg

    @property
    def exists(self) -> bool:
        return self.version > 0 or bool(self._pending)

    def apply(self, event: DomainEvent) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _record(self, event: DomainEvent) -> None:
        self.apply(event)
        self._pending.append(event)

    @property
    def pending(self) -> list[DomainEvent]:
        return list(self._pending)

    def mark_saved(self) -> None:
        self.version += len(self._pending)
        self._pending.clear()


class StateMachine:
    """A transition table: state -> {command: target state or None when it stays}.

    The single source for both checking a command and telling the caller which
    commands the current state allows (the 409 body).
    """

    def __init__(self, aggregate: str, table: Mapping[StrEnum, Mapping[str, StrEnum | None]]) -> None:
        self.aggregate = aggregate
        self.table = table

    def allowed(self, state: StrEnum) -> list[str]:
        return sorted(self.table.get(state, {}))

    def check(self, aggregate_id: str, state: StrEnum, command: str) -> StrEnum | None:
        commands = self.table.get(state, {})
        if command not in commands:
            raise InvalidTransition(self.aggregate, aggregate_id, state.value, command, commands)
        return commands[command]
