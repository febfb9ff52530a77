"""The reconciliation scorecard (GET /kolable/reconciliation/scorecard): pure and deterministic.

Definitions (all Money per currency, never mixed):

- per status: the number of orders and the sums of their order amount, paid, refunded,
  recovered, open dispute and cash gap;
- **cash gap** = for every order, whatever its status: refunded (refunds + lost disputes)
  - recovered by a re-buy + the amount under an open dispute. That is the money that left Kolable
  and has not come back, plus the money a pending dispute may still take. A data_gap order
  counts with the facts known about it, so missing columns never hide money. Decisions do not
  change the cash gap (closing a case does not bring the money back); they are summarised apart;
- **recovered by re-buys** = sum over refunded orders of min(re-buy paid, refunded);
- **orders needing action**: every data_gap and dispute_pending order, and every refunded_no_rebuy
  order without a decision in force (a decision taken at its current status), with the next
  step, owner and cash gap; data_gap first, then dispute_pending, then refunded_no_rebuy, then
  the largest cash gap, then the order id;
- **collection list** (補收款清單): the orders whose decision in force is pursue.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from libs.domain.money import Money
from services.payments.domain.kolable.classify import ESCALATION
from services.payments.domain.kolable.decisions import RefundDecision
from services.payments.domain.kolable.events import (
    DecisionKind,
    KolableClassification,
    KolableRole,
    ReconciliationStatus,
    Value,
)

__all__ = ["ActionItem", "CollectionItem", "DecisionLine", "Scorecard", "StatusLine", "scorecard"]

S = ReconciliationStatus
Amounts = dict[str, Money]

ACTION_ORDER: dict[ReconciliationStatus, int] = {S.DATA_GAP: 0, S.DISPUTE_PENDING: 1, S.REFUNDED_NO_REBUY: 2}
MONEY_FIELDS = ("amount", "paid", "refunded", "recovered", "open_dispute", "cash_gap")


class StatusLine(Value):
    """One status: how many orders, and their money per currency."""

    status: ReconciliationStatus
    count: int
    amount: Amounts
    paid: Amounts
    refunded: Amounts
    recovered: Amounts
    open_dispute: Amounts
    cash_gap: Amounts


class ActionItem(Value):
    """An order that needs someone to act, with what to do and who does it."""

    order_id: str
    status: ReconciliationStatus
    provisional_status: ReconciliationStatus | None = None
    owner: KolableRole
    owner_name: str
    escalate_to: KolableRole | None = None
    next_step_zh: str
    next_step_en: str
    reason: str
    reason_zh: str
    missing_fields: tuple[str, ...] = ()
    cash_gap: Money
    decision: DecisionKind | None = None  # the decision in force, if any (data_gap / dispute_pending)


class DecisionLine(Value):
    """Decisions in force of one kind: how many, and the cash gap they cover."""

    decision: DecisionKind
    count: int
    cash_gap: Amounts


class CollectionItem(Value):
    """An order Louis decided to pursue (追補): what to collect from whom."""

    order_id: str
    student_id: str | None
    course_id: str | None
    to_collect: Money
    decision_id: str
    reason: str


class Scorecard(Value):
    orders: int
    by_status: list[StatusLine]
    cash_gap: Amounts
    cash_gap_refunds: Amounts  # refunded and not recovered by a re-buy
    cash_gap_disputes: Amounts  # under an open dispute
    refunded: Amounts
    recovered_by_rebuy: Amounts
    rebuys: int  # refunded orders with a linked re-buy
    needing_action: list[ActionItem]
    decisions: list[DecisionLine]
    collection_list: list[CollectionItem]


def _sum(items: Iterable[Money]) -> Amounts:
    totals: dict[str, int] = defaultdict(int)
    for money in items:
        totals[money.currency] += money.amount
    return {c: Money(amount=totals[c], currency=c) for c in sorted(totals)}


def scorecard(classifications: Iterable[KolableClassification],
              decisions: Mapping[str, RefundDecision] | None = None) -> Scorecard:
    """The scorecard of a set of classifications; `decisions` maps an order id to its latest decision.

    A decision counts only while it was taken at the order's current status.
    """
    items = sorted(classifications, key=lambda c: c.order_id)
    if len({c.order_id for c in items}) != len(items):
        raise ValueError("one classification per order")
    latest = decisions or {}
    in_force = {c.order_id: latest[c.order_id] for c in items
                if c.order_id in latest and latest[c.order_id].applies_to(c)}

    lines = []
    for status in ReconciliationStatus:
        group = [c for c in items if c.status is status]
        sums = {name: _sum(getattr(c, name) for c in group) for name in MONEY_FIELDS}
        lines.append(StatusLine(status=status, count=len(group), **sums))

    actions = []
    for c in items:
        decided = in_force.get(c.order_id)
        if c.status not in ACTION_ORDER or (c.status is S.REFUNDED_NO_REBUY and decided is not None):
            continue
        actions.append(ActionItem(
            order_id=c.order_id, status=c.status, provisional_status=c.provisional_status, owner=c.owner,
            owner_name=c.owner.person, escalate_to=ESCALATION.get(c.status), next_step_zh=c.next_step_zh,
            next_step_en=c.next_step_en, reason=c.reason, reason_zh=c.reason_zh, missing_fields=c.missing_fields,
            cash_gap=c.cash_gap, decision=decided.decision if decided else None))
    actions.sort(key=lambda a: (ACTION_ORDER[a.status], -a.cash_gap.amount, a.order_id))

    by_kind: Counter[DecisionKind] = Counter(d.decision for d in in_force.values())
    classified = {c.order_id: c for c in items}
    decision_lines = [
        DecisionLine(decision=kind, count=by_kind[kind],
                     cash_gap=_sum(classified[oid].cash_gap for oid, d in in_force.items() if d.decision is kind))
        for kind in DecisionKind]
    collection = [
        CollectionItem(order_id=oid, student_id=classified[oid].student_id, course_id=classified[oid].course_id,
                       to_collect=classified[oid].cash_gap, decision_id=d.decision_id, reason=d.reason)
        for oid, d in sorted(in_force.items()) if d.decision is DecisionKind.PURSUE]

    return Scorecard(
        orders=len(items), by_status=lines,
        cash_gap=_sum(c.cash_gap for c in items),
        cash_gap_refunds=_sum(c.refunded - c.recovered for c in items),
        cash_gap_disputes=_sum(c.open_dispute for c in items),
        refunded=_sum(c.refunded for c in items),
        recovered_by_rebuy=_sum(c.recovered for c in items),
        rebuys=sum(1 for c in items if c.rebuy_order_id is not None),
        needing_action=actions, decisions=decision_lines, collection_list=collection)
