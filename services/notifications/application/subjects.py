"""What the messages of an RMA need from the events that carry it (table notifications_subjects):
the customer's contact and locale, the name on the shipping address, the shipment, its tracking
number and the carrier's ETA. Written in the reaction's transaction; a field once known is only
replaced by a newer non-empty value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.rma.domain.events import Contact


@dataclass(frozen=True)
class Subject:
    subject_id: str
    subject_type: str
    customer_id: str | None
    email: str | None
    phone: str | None
    locale: str | None
    customer_name: str | None
    shipment_id: str | None
    carrier: str | None
    tracking_number: str | None
    carrier_eta: datetime | None

    def address(self, channel: str) -> str | None:
        """Where a message on `channel` goes; None when the customer gave nothing for it."""
        if channel == "email":
            return self.email or None
        if channel == "sms":
            return self.phone or None
        return self.customer_id or None


async def remember(conn: asyncpg.Connection, subject_id: str, at: datetime, *, contact: Contact | None = None,
                   customer_name: str | None = None, shipment_id: str | None = None, carrier: str | None = None,
                   tracking_number: str | None = None, carrier_eta: datetime | None = None,
                   subject_type: str = "rma") -> None:
    await conn.execute(
        """INSERT INTO notifications_subjects AS s (subject_id, subject_type, customer_id, email, phone, locale,
                                                    customer_name, shipment_id, carrier, tracking_number,
                                                    carrier_eta, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           ON CONFLICT (subject_id) DO UPDATE SET
               customer_id = COALESCE(EXCLUDED.customer_id, s.customer_id),
               email = COALESCE(EXCLUDED.email, s.email),
               phone = COALESCE(EXCLUDED.phone, s.phone),
               locale = COALESCE(EXCLUDED.locale, s.locale),
               customer_name = COALESCE(EXCLUDED.customer_name, s.customer_name),
               shipment_id = COALESCE(EXCLUDED.shipment_id, s.shipment_id),
               carrier = COALESCE(EXCLUDED.carrier, s.carrier),
               tracking_number = COALESCE(EXCLUDED.tracking_number, s.tracking_number),
               carrier_eta = COALESCE(EXCLUDED.carrier_eta, s.carrier_eta),
               updated_at = GREATEST(s.updated_at, EXCLUDED.updated_at)""",
        subject_id, subject_type, contact.customer_id if contact else None,
        (contact.email or None) if contact else None, (contact.phone or None) if contact else None,
        contact.locale if contact else None, customer_name or None,
        shipment_id, carrier, tracking_number, carrier_eta, at)


async def get(conn: asyncpg.Connection | asyncpg.Pool, subject_id: str) -> Subject | None:
    row = await conn.fetchrow(
        """SELECT subject_id, subject_type, customer_id, email, phone, locale, customer_name, shipment_id, carrier,
                  tracking_number, carrier_eta FROM notifications_subjects WHERE subject_id = $1""", subject_id)
    return Subject(**dict(row)) if row else None
