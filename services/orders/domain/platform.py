"""The PlatformConditions aggregate (stream `platform-conditions`): weather and load for the policy.

Seed 二 names severe weather (天氣) and platform load (經營情況) as prepayment triggers.
Operations set them; `snapshot()` is what `prepayment.decide` reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from libs.domain.aggregate import Aggregate
from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from services.orders.domain.events import PlatformConditionsChanged
from services.orders.domain.prepayment import ConditionsSnapshot

__all__ = ["CONDITIONS_ID", "PlatformConditions"]

CONDITIONS_ID = "conditions"


class PlatformConditions(Aggregate):
    """The platform's current conditions; a single instance with id 'conditions'."""

    category = "platform"

    def __init__(self, aggregate_id: str = CONDITIONS_ID) -> None:
        super().__init__(aggregate_id)
        self.severe_weather_cities: list[str] = []
        self.load_pct: int = 0
        self.note: str = ""
        self.changed_at: datetime | None = None

    def allowed_commands(self) -> list[str]:
        """Conditions can always be changed."""
        return ["change"]

    def snapshot(self) -> ConditionsSnapshot:
        """The conditions as the prepayment policy reads them (calm and idle before any change)."""
        return ConditionsSnapshot(severe_weather_cities=frozenset(self.severe_weather_cities),
                                  load_pct=self.load_pct)

    def change(self, *, severe_weather_cities: Iterable[str], load_pct: int, note: str, at: datetime) -> None:
        """Replace the conditions as a whole (not a delta, so a retried change is harmless)."""
        if not 0 <= load_pct <= 100:
            raise RuleViolation("load_pct", "must be between 0 and 100")
        cities: list[str] = []
        for i, city in enumerate(severe_weather_cities):
            name = city.strip()
            if not name:
                raise RuleViolation(f"severe_weather_cities[{i}]", "must not be blank")
            if name not in cities:
                cities.append(name)
        self._record(PlatformConditionsChanged(conditions_id=self.id, severe_weather_cities=cities,
                                               load_pct=load_pct, note=note, at=at))

    def apply(self, event: DomainEvent) -> None:
        """Evolve the state by one event; no checks here."""
        match event:
            case PlatformConditionsChanged():
                self.severe_weather_cities = list(event.severe_weather_cities)
                self.load_pct, self.note, self.changed_at = event.load_pct, event.note, event.at
            case _:
                raise TypeError(f"PlatformConditions cannot apply {type(event).__name__}")
