"""Which status a parcel is in, given the carrier events it has had (seed 001, case 9). Pure.

Carriers deliver their events late, twice, and out of order (a scanner that uploads its batch
an hour later, a webhook retried, the Kafka feed and the webhook both carrying one event). The
status must therefore be a function of the *set* of distinct events, never of their arrival
order:

1. Duplicates: an event whose `(carrier, event_key)` was seen before is dropped (the key is the
   carrier's event id, or a hash of its content when the carrier gives none). It enters neither
   the history nor the status.
2. Order: events are taken in the order they *occurred* (`occurred_at`), ties broken by the
   status rank below, then by the key, so that the result is deterministic.
3. Walking that order, each event sets the status, except that the two terminal statuses hold:
   - `Delivered` is only ever left for `ReturnedToSender` (the recipient refused it after all, or
     it was collected back); a later `InTransit`/`OutForDelivery`/`Exception` scan of a delivered
     parcel is a carrier's glitch, kept in the history, not a status.
   - `ReturnedToSender` is final (its own "delivered back to the sender" is still that).
   An `Exception` is not terminal: a later `InTransit` or `OutForDelivery` clears it.
4. Hence a late event that occurred *before* the current deciding event never regresses the
   status: it goes into the history, and the status changes only if it is terminal (a late
   `Delivered` stamped before an `InTransit` that arrived first is still the delivery: clocks of
   hand-held scanners drift, deliveries do not un-happen).

The ETA (`current_eta`): none once delivered or returned; otherwise the carrier's estimate from
the most recent event that carried one; on `OutForDelivery` without a newer carrier estimate,
21:00 local time of that day; otherwise the estimate of the service level at booking
(carriers.service_level_eta).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from services.shipping.domain.carriers import LOCAL_TZ
from services.shipping.domain.events import CarrierTrackingUpdate, TrackingStatus

RANK: dict[TrackingStatus, int] = {
    TrackingStatus.IN_TRANSIT: 1,
    TrackingStatus.OUT_FOR_DELIVERY: 2,
    TrackingStatus.EXCEPTION: 3,
    TrackingStatus.DELIVERED: 4,
    TrackingStatus.RETURNED_TO_SENDER: 5,
}
TERMINAL = frozenset({TrackingStatus.DELIVERED, TrackingStatus.RETURNED_TO_SENDER})
OUT_FOR_DELIVERY_BY = time(21, 0)

# What customers read on the tracking page (zh-TW).
STATUS_ZH: dict[str, str] = {
    "Created": "已建立託運單",
    "Issued": "已產生退貨標籤",
    TrackingStatus.IN_TRANSIT.value: "運送中",
    TrackingStatus.OUT_FOR_DELIVERY.value: "配送中",
    TrackingStatus.DELIVERED.value: "已送達",
    TrackingStatus.EXCEPTION.value: "配送異常",
    TrackingStatus.RETURNED_TO_SENDER.value: "已退回寄件人",
}


def may_follow(current: TrackingStatus | None, nxt: TrackingStatus) -> bool:
    """May a parcel in `current` move to `nxt` (rule 3)?"""
    if current is None or current not in TERMINAL:
        return True
    return current is TrackingStatus.DELIVERED and nxt is TrackingStatus.RETURNED_TO_SENDER


def occurrence_order(u: CarrierTrackingUpdate) -> tuple[datetime, int, str, str]:
    return (u.occurred_at, RANK[u.status], u.carrier, u.event_key)


def deciding_update(updates: Iterable[CarrierTrackingUpdate]) -> CarrierTrackingUpdate | None:
    """The event that decides the current status (rules 2 and 3), or None without events."""
    deciding: CarrierTrackingUpdate | None = None
    for u in sorted(updates, key=occurrence_order):
        if deciding is None or may_follow(deciding.status, u.status):
            deciding = u
    return deciding


def current_eta(updates: Iterable[CarrierTrackingUpdate], fallback: datetime | None,
                fallback_source: str | None) -> tuple[datetime | None, str | None]:
    """(eta, source) with source one of carrier, out_for_delivery, service_level (see module doc)."""
    ordered = sorted(updates, key=occurrence_order)
    deciding = deciding_update(ordered)
    if deciding is not None and deciding.status in TERMINAL:
        return None, None
    with_eta = [u for u in ordered if u.eta is not None]
    latest_estimate = with_eta[-1] if with_eta else None
    if deciding is not None and deciding.status is TrackingStatus.OUT_FOR_DELIVERY and (
            latest_estimate is None or latest_estimate.occurred_at < deciding.occurred_at):
        local = deciding.occurred_at.astimezone(LOCAL_TZ)
        by = datetime.combine(local.date(), OUT_FOR_DELIVERY_BY, LOCAL_TZ)
        return (by if by > local else local + timedelta(hours=2)), "out_for_delivery"
    if latest_estimate is not None:
        return latest_estimate.eta, "carrier"
    return fallback, fallback_source if fallback is not None else None


@dataclass
class TrackingLog:
    """A parcel's distinct carrier events (the history) and what they decide."""

    updates: list[CarrierTrackingUpdate] = field(default_factory=list)
    _keys: set[tuple[str, str]] = field(default_factory=set)

    def seen(self, update: CarrierTrackingUpdate) -> bool:
        return (update.carrier, update.event_key) in self._keys

    def add(self, update: CarrierTrackingUpdate) -> None:
        self._keys.add((update.carrier, update.event_key))
        self.updates.append(update)

    @property
    def deciding(self) -> CarrierTrackingUpdate | None:
        return deciding_update(self.updates)

    @property
    def status(self) -> TrackingStatus | None:
        d = self.deciding
        return d.status if d is not None else None

    def history(self) -> list[CarrierTrackingUpdate]:
        """The history in the order the events occurred."""
        return sorted(self.updates, key=occurrence_order)
