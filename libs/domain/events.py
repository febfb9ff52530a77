"""Versioned domain events.

Every event type is a frozen pydantic model with a globally unique `event_type`, a
`schema_version` and the Kafka `topic` of the service that owns it. Subclasses register
themselves, so the relay, consumers, `make schemas` and the auditor CLI can all decode
any stored event by (type, version). Older stored versions are brought up to date by
registered upcasters, one version step at a time; the event store is never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class UnknownEventType(LookupError):
    pass


class UnsupportedSchemaVersion(LookupError):
    """A stored or received event has a schema version this code cannot read (e.g. from the future)."""


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class EventRegistry:
    def __init__(self) -> None:
        self._types: dict[str, type[DomainEvent]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: type[DomainEvent]) -> None:
        existing = self._types.get(cls.event_type)
        if existing is not None and existing is not cls and \
                (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"event type {cls.event_type!r} is defined twice: {existing} and {cls}")
        self._types[cls.event_type] = cls

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function turning the data of `from_version` into `from_version + 1`."""

        def deco(fn: Upcaster) -> Upcaster:
            self._upcasters[(event_type, from_version)] = fn
            return fn

        return deco

    def get(self, event_type: str) -> type[DomainEvent]:
        try:
            return self._types[event_type]
        except KeyError:
            raise UnknownEventType(f"unknown event type {event_type!r}") from None

    def __contains__(self, event_type: str) -> bool:
        return event_type in self._types

    def all(self) -> list[type[DomainEvent]]:
        return sorted(self._types.values(), key=lambda c: (c.topic, c.event_type))

    def decode(self, event_type: str, schema_version: int, data: dict[str, Any]) -> DomainEvent:
        cls = self.get(event_type)
        if schema_version > cls.schema_version:
            raise UnsupportedSchemaVersion(
                f"{event_type} v{schema_version} is newer than this code's v{cls.schema_version}")
        version = schema_version
        while version < cls.schema_version:
            step = self._upcasters.get((event_type, version))
            if step is None:
                raise UnsupportedSchemaVersion(f"no upcaster for {event_type} v{version} -> v{version + 1}")
            data = step(dict(data))
            version += 1
        return cls.model_validate(data)


registry = EventRegistry()


class DomainEvent(BaseModel):
    """Base class of every event. Subclasses set the three class variables."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1
    topic: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        if not cls.event_type:
            cls.event_type = cls.__name__
        if not cls.topic:
            raise TypeError(f"{cls.__name__} must declare the topic of its service")
        registry.register(cls)

    def to_data(self) -> dict[str, Any]:
        """The JSON-ready payload stored in the event store's `data` column."""
        return self.model_dump(mode="json")
