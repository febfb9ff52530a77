"""Unit tests of the Kolable refund/re-buy reconciliation (war-room seed 000); shared builders.

The story: student s-1 buys course c-1 (TWD 28,000) on Monday 2025-05-12 at 10:00 Taipei time,
within the seed's 5/12-5/21 export window. Amounts in the builders are in TWD major units.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from libs.domain.events import registry
from libs.domain.money import Money
from services.payments.domain.kolable.classify import FactKind, OrderRecord, PaymentFact
from services.payments.domain.kolable.events import DisputeStatus

TZ = ZoneInfo("Asia/Taipei")
T0 = datetime(2025, 5, 12, 10, 0, tzinfo=TZ)
FIXTURES = Path(__file__).parent / "fixtures"
DOC = Path(__file__).parents[3] / "docs" / "kolable-import-format.md"

HEADER = ("order_id,student_id,course_id,amount,currency,ordered_at,payment_status,paid_at,payment_ref,"
          "refunded_amount,refunded_at,dispute_status,disputed_at,line_thread,notes")


def day(n: float) -> datetime:
    """T0 plus n days."""
    return T0 + timedelta(days=n)


def twd(major: int | float | str) -> Money:
    """TWD from major units given as an int or an exact decimal string: twd(28000), twd("1200.50")."""
    from decimal import Decimal

    return Money(amount=int(Decimal(str(major)) * 100), currency="TWD")


def record(order_id: str, *, student: str | None = "s-1", course: str | None = "c-1", amount: Any = 28000,
           ordered: datetime | None = T0, line: str | None = "line-1") -> OrderRecord:
    return OrderRecord(order_id=order_id, amount=twd(amount), student_id=student, course_id=course,
                       ordered_at=ordered, line_thread=line)


def charge(order_id: str, *, amount: Any = 28000, at: datetime | None = T0, ref: str | None = "auto",
           source: str = "import") -> PaymentFact:
    return PaymentFact(order_id, FactKind.CHARGE_SUCCEEDED, source=source, amount=twd(amount), at=at,
                       reference=f"pi_{order_id}" if ref == "auto" else ref)


def refund(order_id: str, *, amount: Any = 28000, at: datetime | None = None, ref: str | None = None,
           source: str = "import") -> PaymentFact:
    return PaymentFact(order_id, FactKind.REFUND, source=source, amount=twd(amount) if amount is not None else None,
                       at=at if at is not None else day(2), reference=ref)


def dispute(order_id: str, status: DisputeStatus | str, *, at: datetime | None = None, amount: Any = None,
            ref: str | None = None, source: str = "import") -> PaymentFact:
    return PaymentFact(order_id, FactKind.DISPUTE, source=source, dispute_status=DisputeStatus(status),
                       amount=twd(amount) if amount is not None else None,
                       at=at if at is not None else day(3), reference=ref)


def paid(order_id: str, when: datetime = T0, amount: Any = 28000, **rec: Any) -> tuple[OrderRecord, PaymentFact]:
    """An order and its successful charge at `when`."""
    return record(order_id, ordered=when, amount=amount, **rec), charge(order_id, at=when, amount=amount)


def csv_bytes(*rows: str, header: str = HEADER, bom: bool = False) -> bytes:
    text = "\n".join([header, *rows]) + "\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def round_trip(events: list[Any]) -> list[Any]:
    """Events as the store would give them back: JSON data decoded through the registry."""
    return [registry.decode(e.event_type, e.schema_version, e.to_data()) for e in events]
