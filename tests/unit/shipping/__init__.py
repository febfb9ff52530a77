"""Helpers of the shipping unit tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.shipping.domain.carriers import LOCAL_TZ
from services.shipping.domain.events import CarrierTrackingUpdate, TrackingStatus

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=LOCAL_TZ)  # a Monday


def update(status: TrackingStatus, minutes: int, key: str | None = None, *, carrier: str = "globex",
           number: str = "GX0000000001TW", eta: datetime | None = None) -> CarrierTrackingUpdate:
    return CarrierTrackingUpdate(carrier=carrier, event_key=key or f"id:{status.value}-{minutes}",
                                 tracking_number=number, status=status, carrier_status=status.value,
                                 occurred_at=T0 + timedelta(minutes=minutes), eta=eta)
