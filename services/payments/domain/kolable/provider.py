"""The payment provider's facts about a Kolable order, as the classifier's neutral inputs.

The upstream ingestion normalises Stripe events into `UpstreamFact`s (domain/upstream.py);
this module turns the facts of one order into what `classify` reads: `PaymentFact`s (source
"stripe") and, for an order the export does not list, an `OrderRecord` from the payment's
metadata (Kolable's checkout puts `order_id`, `student_id` and `course_id` on the
PaymentIntent and its charge). Pure: the same facts in any order give the same result,
because everything is placed by the provider's own time (`occurred_at` is the event's
`created`), never by arrival.

How each family is read:

- **charges**: `payment_intent.succeeded` and `charge.succeeded` report one payment twice; both
  become one charge_succeeded fact keyed by the PaymentIntent id (the classifier keeps one per
  reference). `payment_intent.payment_failed` is a failed attempt of the same PaymentIntent; a
  later success of it wins in the classifier.
- **refunds**, per charge: each refund object seen (`charge.refund.updated`, `refund.*`, or the
  refunds a charge lists in older API versions) counts at its latest status, except failed and
  canceled refunds; pending ones count (the money is on its way back). Since API version
  2022-11-15 `charge.refunded` carries only the charge's cumulative `amount_refunded`: whatever
  the latest cumulative amount shows above the refunds seen one by one is counted as one
  "unitemized" refund of that charge, dated by that event, so that a refund is never lost
  because its own object was not sent, and never counted twice when it was.
- **disputes**: every dispute fact, with Stripe's status mapped to the seed's lifecycle
  (inquiries `warning_*` count as open disputes, `warning_closed` as won); the classifier keeps
  the latest per dispute id. `prevented` (or any status we do not know) is a data gap.
- a fact carrying a `data_gap` (an unsupported currency, say) counts no money and names the
  missing field, so the order is a data_gap with the provider's reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from libs.domain.money import CURRENCY_EXPONENTS, Money
from services.payments.domain.kolable.classify import FactKind, OrderRecord, PaymentFact
from services.payments.domain.kolable.events import DisputeStatus
from services.payments.domain.upstream_events import (
    UpstreamChargeRefunded,
    UpstreamChargeSucceeded,
    UpstreamDisputeClosed,
    UpstreamDisputeFact,
    UpstreamFact,
    UpstreamPaymentFailed,
    UpstreamRefundUpdated,
)

__all__ = ["COURSE_KEY", "DISPUTE_STATUS", "STUDENT_KEY", "belongs_to_kolable", "provider_inputs"]

SOURCE = "stripe"
COURSE_KEY, STUDENT_KEY = "course_id", "student_id"
NOT_COUNTED = frozenset({"failed", "canceled"})  # refund statuses that gave nothing back

DISPUTE_STATUS: dict[str, DisputeStatus] = {
    "warning_needs_response": DisputeStatus.NEEDS_RESPONSE,
    "needs_response": DisputeStatus.NEEDS_RESPONSE,
    "warning_under_review": DisputeStatus.UNDER_REVIEW,
    "under_review": DisputeStatus.UNDER_REVIEW,
    "warning_closed": DisputeStatus.WON,  # an inquiry closed without a chargeback: the money stays
    "won": DisputeStatus.WON,
    "lost": DisputeStatus.LOST,
}

_CHARGE_FACTS = (UpstreamChargeSucceeded, UpstreamPaymentFailed)


def belongs_to_kolable(fact: UpstreamFact) -> bool:
    """Whether the payment's metadata marks it as a Kolable course order (it names a course)."""
    metadata = getattr(fact, "metadata", None) or {}
    return bool(metadata.get(COURSE_KEY))


def _gap_field(fact: UpstreamFact) -> str:
    amount = getattr(fact, "provider_amount", None)
    if amount is not None and amount.currency.upper() not in CURRENCY_EXPONENTS:
        return "currency"
    return "payment_data"


def _gap(fact: UpstreamFact, order_id: str, kind: FactKind, reference: str | None) -> PaymentFact:
    return PaymentFact(order_id, kind, source=SOURCE, at=fact.occurred_at, reference=reference,
                       dispute_status=DisputeStatus.NEEDS_RESPONSE if kind is FactKind.DISPUTE else None,
                       gap=_gap_field(fact), gap_reason=fact.data_gap)


def _charges(order_id: str, facts: Sequence[UpstreamFact]) -> list[PaymentFact]:
    out: list[PaymentFact] = []
    for f in facts:
        if isinstance(f, UpstreamChargeSucceeded):
            ref = f.payment_intent_id or f.charge_id or f.provider_event_id
            if f.data_gap:
                out.append(_gap(f, order_id, FactKind.CHARGE_SUCCEEDED, ref))
            else:
                out.append(PaymentFact(order_id, FactKind.CHARGE_SUCCEEDED, source=SOURCE, amount=f.amount,
                                       at=f.occurred_at, reference=ref))
        elif isinstance(f, UpstreamPaymentFailed):
            if f.data_gap:
                out.append(_gap(f, order_id, FactKind.CHARGE_FAILED, f.payment_intent_id))
            else:
                out.append(PaymentFact(order_id, FactKind.CHARGE_FAILED, source=SOURCE, at=f.occurred_at,
                                       reference=f.payment_intent_id))
    return out


def _refunds(order_id: str, facts: Sequence[UpstreamFact]) -> list[PaymentFact]:
    out: list[PaymentFact] = []
    # refund id -> (status time, amount, created, status); the latest report of each refund wins.
    seen: dict[str, tuple[datetime, Money | None, datetime, str]] = {}
    charge_of: dict[str, str] = {}
    cumulative: dict[str, UpstreamChargeRefunded] = {}

    def see(refund_id: str, at: datetime, amount: Money | None, created: datetime, status: str,
            charge_id: str | None) -> None:
        if refund_id not in seen or at >= seen[refund_id][0]:
            seen[refund_id] = (at, amount, created, status)
        if charge_id:
            charge_of.setdefault(refund_id, charge_id)

    for f in facts:
        if isinstance(f, UpstreamRefundUpdated):
            if f.data_gap:
                out.append(_gap(f, order_id, FactKind.REFUND, f.refund_id))
                continue
            see(f.refund_id, f.occurred_at, f.amount, f.refund_created_at, f.status, f.charge_id)
        elif isinstance(f, UpstreamChargeRefunded):
            if f.data_gap:
                out.append(_gap(f, order_id, FactKind.REFUND, f"{f.charge_id}/refunds"))
                continue
            latest = cumulative.get(f.charge_id)
            if latest is None or (f.occurred_at, f.provider_amount_refunded) >= (
                    latest.occurred_at, latest.provider_amount_refunded):
                cumulative[f.charge_id] = f
            for line in f.refunds:
                see(line.refund_id, f.occurred_at, line.amount, line.created_at, line.status, f.charge_id)
            if f.refund_id and f.refund_amount is not None:
                see(f.refund_id, f.occurred_at, f.refund_amount, f.occurred_at, f.refund_status or "succeeded",
                    f.charge_id)

    itemised: dict[str, int] = defaultdict(int)  # charge -> every refund seen, whatever its status
    for refund_id, (_at, amount, created, status) in sorted(seen.items()):
        if amount is not None and refund_id in charge_of:
            itemised[charge_of[refund_id]] += amount.amount
        if status not in NOT_COUNTED:
            out.append(PaymentFact(order_id, FactKind.REFUND, source=SOURCE, amount=amount, at=created,
                                   reference=refund_id))
    for charge_id, fact in sorted(cumulative.items()):
        assert fact.amount_refunded is not None
        rest = fact.amount_refunded.amount - itemised[charge_id]
        if rest > 0:
            out.append(PaymentFact(order_id, FactKind.REFUND, source=SOURCE,
                                   amount=Money(amount=rest, currency=fact.amount_refunded.currency),
                                   at=fact.occurred_at, reference=f"{charge_id}/unitemized"))
    return out


def _disputes(order_id: str, facts: Sequence[UpstreamFact]) -> list[PaymentFact]:
    out: list[PaymentFact] = []
    for f in facts:
        if not isinstance(f, UpstreamDisputeFact):
            continue
        status = DISPUTE_STATUS.get(f.status)
        if isinstance(f, UpstreamDisputeClosed) and f.outcome is not None:
            status = DisputeStatus.WON if f.outcome == "won" else DisputeStatus.LOST
        if f.data_gap or status is None:
            gap = _gap(f, order_id, FactKind.DISPUTE, f.dispute_id)
            if not f.data_gap:
                gap = PaymentFact(order_id, FactKind.DISPUTE, source=SOURCE, at=f.occurred_at,
                                  reference=f.dispute_id, dispute_status=DisputeStatus.NEEDS_RESPONSE,
                                  gap="dispute_status", gap_reason=f"dispute {f.dispute_id} has status {f.status}")
            out.append(gap)
            continue
        out.append(PaymentFact(order_id, FactKind.DISPUTE, source=SOURCE, amount=f.amount, at=f.occurred_at,
                               reference=f.dispute_id, dispute_status=status))
    return out


def _record(order_id: str, facts: Sequence[UpstreamFact]) -> OrderRecord | None:
    charges = sorted((f for f in facts if isinstance(f, _CHARGE_FACTS)), key=lambda f: f.occurred_at)
    if not charges:
        return None
    metadata: dict[str, str] = {}
    for f in charges:  # the earliest value of each key (they do not change in practice)
        for key, value in f.metadata.items():
            metadata.setdefault(key, value)
    paid: list[UpstreamChargeSucceeded | UpstreamPaymentFailed] = [
        f for f in charges if isinstance(f, UpstreamChargeSucceeded) and f.amount is not None]
    usable = paid or [f for f in charges if f.amount is not None]
    return OrderRecord(order_id=order_id, amount=usable[0].amount if usable else None,
                       student_id=(metadata.get(STUDENT_KEY) or "").strip() or None,
                       course_id=(metadata.get(COURSE_KEY) or "").strip() or None,
                       ordered_at=charges[0].occurred_at, source=SOURCE)


def provider_inputs(order_id: str, facts: Iterable[UpstreamFact]) -> tuple[OrderRecord | None, list[PaymentFact]]:
    """The provider's view of one order: its record from the payment metadata (None when no charge
    or payment attempt of it was reported) and its payment facts."""
    ordered = sorted(facts, key=lambda f: (f.occurred_at, f.provider_event_id))
    return _record(order_id, ordered), [*_charges(order_id, ordered), *_refunds(order_id, ordered),
                                        *_disputes(order_id, ordered)]
