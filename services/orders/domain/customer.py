"""The Customer aggregate (stream `customer-{id}`): what the prepayment policy knows of a customer.

It keeps the credit score, the customer-fault cancellations and the prepayment flag of
seed 五 (未預付的訂單): a customer who cancels an unprepaid order shortly before the service
costs the merchant (the platform compensates) and must prepay from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from libs.domain.aggregate import Aggregate
from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from services.orders.domain.events import (
    CustomerCancellationRecorded,
    CustomerCreditScoreRecorded,
    CustomerFlaggedForPrepayment,
)
from services.orders.domain.prepayment import CustomerStanding, PrepaymentPolicy

__all__ = ["Customer", "CustomerStanding"]


@dataclass(frozen=True, slots=True)
class _Cancellation:
    order_id: str
    at: datetime
    was_prepaid: bool
    seconds_before_service_start: int


def _hours_minutes(seconds: int) -> str:
    sign = "-" if seconds < 0 else ""
    hours, rest = divmod(abs(seconds), 3600)
    return f"{sign}{hours}h{rest // 60:02d}m"


class Customer(Aggregate):
    """A customer's standing: credit score, customer-fault cancellations and prepayment flag."""

    category = "customer"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.credit_score: int | None = None
        self.credit_score_source: str | None = None
        self.cancellations: list[_Cancellation] = []
        self.flagged: bool = False
        self.flag_reason: str | None = None

    def allowed_commands(self) -> list[str]:
        """Both commands are always allowed (a customer stream starts with either)."""
        return ["record_cancellation", "record_credit_score"]

    def standing(self, at: datetime, policy: PrepaymentPolicy) -> CustomerStanding:
        """What the prepayment policy sees at `at`: score, recent cancellations, flag."""
        since = at - timedelta(days=policy.cancellation_lookback_days)
        recent = sum(1 for c in self.cancellations if since < c.at <= at)
        return CustomerStanding(credit_score=self.credit_score, recent_cancellations=recent,
                                flagged=self.flagged, flag_reason=self.flag_reason)

    def record_credit_score(self, score: int, source: str, at: datetime) -> None:
        """Record a credit score (0-1000) from an external source; the latest one counts."""
        if not 0 <= score <= 1000:
            raise RuleViolation("score", "must be between 0 and 1000")
        self._record(CustomerCreditScoreRecorded(customer_id=self.id, score=score, source=source, at=at))

    def record_cancellation(self, order_id: str, was_prepaid: bool, seconds_before_service_start: int,
                            at: datetime, policy: PrepaymentPolicy) -> None:
        """Record a customer-fault cancellation, and flag the customer when seed 五's rule applies."""
        if any(c.order_id == order_id for c in self.cancellations):
            return  # the same cancellation reported again changes nothing
        self._record(CustomerCancellationRecorded(
            customer_id=self.id, order_id=order_id, was_prepaid=was_prepaid,
            seconds_before_service_start=seconds_before_service_start, at=at))
        # A prepaid order pays its penalty out of the prepayment; an unprepaid one cannot be
        # penalised, so a late cancellation makes the customer prepay from now on.
        window = policy.flag_unprepaid_cancellation_within_hours * 3600
        if not was_prepaid and seconds_before_service_start < window and not self.flagged:
            self._record(CustomerFlaggedForPrepayment(
                customer_id=self.id, order_id=order_id, at=at,
                reason=f"cancelled unprepaid order {order_id} {_hours_minutes(seconds_before_service_start)} "
                       f"before the service start (within "
                       f"{policy.flag_unprepaid_cancellation_within_hours}h)"))

    def apply(self, event: DomainEvent) -> None:
        """Evolve the state by one event; no checks here."""
        match event:
            case CustomerCreditScoreRecorded():
                self.credit_score, self.credit_score_source = event.score, event.source
            case CustomerCancellationRecorded():
                self.cancellations.append(_Cancellation(event.order_id, event.at, event.was_prepaid,
                                                        event.seconds_before_service_start))
            case CustomerFlaggedForPrepayment():
                self.flagged, self.flag_reason = True, event.reason
            case _:
                raise TypeError(f"Customer cannot apply {type(event).__name__}")
