"""The carriers closeloop books parcels with, their tracking numbers and service levels. Pure.

Two carriers, one of each kind the seed's customers meet (their webhook / feed formats are in
carrier_formats.py):

- `globex` — Globex Express, an international express carrier. Tracking numbers `GX` + 10
  digits + `TW` (outbound) and `GR` + 10 digits + `TW` (return labels).
- `island` — 島嶼物流 Island Logistics, a local Taiwanese home-delivery carrier. Tracking numbers
  are 12 digits, as Taiwanese carriers print them (return labels start with 9).

Booking is local: the tracking number derives from the shipment's (or label's) id, so a
retried booking gets the same number; a real carrier API would be called here with that id as
its idempotency key. Parcels to Taiwan go with the local carrier, the rest with the express one.

Service-level ETA (when the carrier has not estimated yet): the booking's day in Asia/Taipei
plus the service's transit days, Sundays not counted, at 18:00 local time:

| carrier | standard | express |
|---|---|---|
| island | 2 days | 1 day |
| globex | 6 days | 3 days |
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from libs.domain.errors import RuleViolation

LOCAL_TZ = ZoneInfo("Asia/Taipei")
DELIVERY_BY = time(18, 0)


@dataclass(frozen=True)
class Carrier:
    code: str
    name: str
    kind: str  # international_express | local
    default_service: str
    transit_days: dict[str, int]


CARRIERS: dict[str, Carrier] = {
    "globex": Carrier("globex", "Globex Express", "international_express", "express",
                      {"express": 3, "standard": 6}),
    "island": Carrier("island", "島嶼物流 Island Logistics", "local", "standard", {"standard": 2, "express": 1}),
}
LOCAL_COUNTRY = "TW"


def carrier(code: str, *, field: str = "carrier") -> Carrier:
    try:
        return CARRIERS[code]
    except KeyError:
        raise RuleViolation(field, f"unknown carrier {code!r}; known: {', '.join(sorted(CARRIERS))}") from None


def carrier_for(country: str) -> Carrier:
    """The carrier a parcel to `country` goes with."""
    return CARRIERS["island"] if country == LOCAL_COUNTRY else CARRIERS["globex"]


def service_level(c: Carrier, level: str | None, *, field: str = "service_level") -> str:
    level = level or c.default_service
    if level not in c.transit_days:
        raise RuleViolation(field, f"{c.code} offers {', '.join(sorted(c.transit_days))}, not {level!r}")
    return level


def _digits(seed: str, n: int) -> str:
    return str(int(hashlib.sha256(seed.encode()).hexdigest(), 16) % 10**n).zfill(n)


def tracking_number(c: Carrier, parcel_id: str, *, outbound: bool) -> str:
    """The tracking number of a parcel: derived from its id (the same booking gives the same number)."""
    seed = f"{c.code}\n{'out' if outbound else 'return'}\n{parcel_id}"
    if c.code == "globex":
        return f"{'GX' if outbound else 'GR'}{_digits(seed, 10)}TW"
    return ("" if outbound else "9") + _digits(seed, 12 if outbound else 11)


def service_level_eta(c: Carrier, level: str, booked_at: datetime) -> datetime:
    """The estimate of the service level (see the module doc)."""
    day = booked_at.astimezone(LOCAL_TZ).date()
    remaining = c.transit_days[level]
    while remaining > 0:
        day += timedelta(days=1)
        if day.weekday() != 6:  # Sunday: no deliveries
            remaining -= 1
    return datetime.combine(day, DELIVERY_BY, LOCAL_TZ)
