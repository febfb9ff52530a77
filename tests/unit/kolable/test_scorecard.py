"""The scorecard against an independent computation over ~1,000 generated orders, plus properties (hypothesis).

The generator writes a CSV export of stories whose outcome it knows (a refund and a re-buy, a
chain of re-buys, a dispute lost, a missing column...) and records, per order, the expected
status and money. The expected scorecard is then summed directly from those expectations, without
the code under test, and compared with what import -> classify -> scorecard produce.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.domain.money import Money
from services.payments.domain.kolable.classify import FactKind, OrderRecord, PaymentFact, classify, inputs_from_rows
from services.payments.domain.kolable.decisions import KolableOrder, RefundDecision
from services.payments.domain.kolable.events import DecisionKind, DisputeStatus, KolableClassification, KolableRole
from services.payments.domain.kolable.events import ReconciliationStatus as S
from services.payments.domain.kolable.importer import parse_export
from services.payments.domain.kolable.scorecard import scorecard
from tests.unit.kolable import HEADER, T0, TZ, charge, day, record, refund, twd

START = datetime(2025, 5, 12, 9, 0, tzinfo=TZ)  # the seed's 5/12-5/21 window


@dataclass
class Expected:
    status: S
    currency: str
    amount: int
    paid: int = 0
    refunded: int = 0
    recovered: int = 0
    open_dispute: int = 0
    rebuy: str | None = None

    @property
    def cash_gap(self) -> int:
        return self.refunded - self.recovered + self.open_dispute


class Generator:
    """Writes CSV rows for stories with known outcomes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lines: list[str] = []
        self.expected: dict[str, Expected] = {}
        self.bad_rows = 0
        self.n = 0

    def order_id(self) -> str:
        self.n += 1
        return f"K-{self.n:05d}"

    def minor(self) -> int:
        return self.rng.randint(1000, 50000) * 100 + self.rng.choice([0, 0, 0, 50, 99])

    def major(self, minor: int, currency: str) -> str:
        whole, cents = divmod(minor, 100)
        text = f"{whole:,}" if self.rng.random() < 0.5 else str(whole)
        return f'"{text}.{cents:02d}"' if "," in text else f"{text}.{cents:02d}"

    def when(self, moment: datetime) -> str:
        return moment.isoformat() if self.rng.random() < 0.8 else moment.astimezone(TZ).date().isoformat()

    def row(self, oid: str, student: str, course: str, minor: int, currency: str, t: datetime, status: str, *,
            refunded: int | None = None, refunded_at: datetime | None = None, dispute: str = "none",
            disputed_at: datetime | None = None, ref: str | None = "auto", line: str | None = "line://x") -> None:
        cells = [oid, student, course, self.major(minor, currency), currency, t.isoformat(), status,
                 t.isoformat() if status != "failed" else "", f"pi_{oid}" if ref == "auto" else (ref or ""),
                 self.major(refunded, currency) if refunded is not None else "",
                 refunded_at.isoformat() if refunded_at else "", dispute,
                 disputed_at.isoformat() if disputed_at else "", line or "", ""]
        self.lines.append(",".join(cells))

    def story(self, k: int) -> None:
        rng = self.rng
        student, course = f"stu-{k}", rng.choice(["c-ai", "c-pm", "c-data"])
        currency = "USD" if rng.random() < 0.1 else "TWD"
        t0 = START + timedelta(minutes=rng.randint(0, 9 * 24 * 60))
        hours = sorted(rng.sample(range(1, 200), 4))
        t1, t2, t3, t4 = (t0 + timedelta(hours=h) for h in hours)
        a1, a2, a3 = self.minor(), self.minor(), self.minor()
        kind = rng.choices(
            ["paid", "won", "refund_full", "refund_partial", "rebuy", "rebuy_refunded", "other_course", "before",
             "chain", "dispute_open", "dispute_lost", "gap_student", "gap_ref", "gap_line", "failed", "bad"],
            weights=[20, 2, 8, 5, 10, 3, 3, 3, 3, 4, 2, 3, 2, 2, 2, 2])[0]
        x = self.expected
        o1, o2, o3 = self.order_id(), self.order_id(), self.order_id()
        if kind == "paid":
            self.row(o1, student, course, a1, currency, t0, "paid")
            x[o1] = Expected(S.PAID_VALID, currency, a1, paid=a1)
        elif kind == "won":
            self.row(o1, student, course, a1, currency, t0, "paid", dispute="won", disputed_at=t1)
            x[o1] = Expected(S.PAID_VALID, currency, a1, paid=a1)
        elif kind == "refund_full":
            self.row(o1, student, course, a1, currency, t0, "refunded", refunded_at=t1)
            x[o1] = Expected(S.REFUNDED_NO_REBUY, currency, a1, paid=a1, refunded=a1)
        elif kind == "refund_partial":
            part = rng.randint(1, a1 - 1)
            self.row(o1, student, course, a1, currency, t0, "partially_refunded", refunded=part, refunded_at=t1)
            x[o1] = Expected(S.REFUNDED_NO_REBUY, currency, a1, paid=a1, refunded=part)
        elif kind == "rebuy":
            self.row(o1, student, course, a1, currency, t0, "refunded", refunded=a1, refunded_at=t1)
            self.row(o2, student, course, a2, currency, t2, "paid")
            x[o1] = Expected(S.REFUNDED_REBOUGHT, currency, a1, paid=a1, refunded=a1, recovered=min(a1, a2), rebuy=o2)
            x[o2] = Expected(S.PAID_VALID, currency, a2, paid=a2)
        elif kind == "rebuy_refunded":
            self.row(o1, student, course, a1, currency, t0, "refunded", refunded_at=t1)
            self.row(o2, student, course, a2, currency, t2, "refunded", refunded_at=t3)
            x[o1] = Expected(S.REFUNDED_NO_REBUY, currency, a1, paid=a1, refunded=a1)
            x[o2] = Expected(S.REFUNDED_NO_REBUY, currency, a2, paid=a2, refunded=a2)
        elif kind == "other_course":
            self.row(o1, student, course, a1, currency, t0, "refunded", refunded_at=t1)
            self.row(o2, student, course + "-v2", a2, currency, t2, "paid")
            x[o1] = Expected(S.REFUNDED_NO_REBUY, currency, a1, paid=a1, refunded=a1)
            x[o2] = Expected(S.PAID_VALID, currency, a2, paid=a2)
        elif kind == "before":
            self.row(o1, student, course, a1, currency, t0, "refunded", refunded_at=t2)
            self.row(o2, student, course, a2, currency, t1, "paid")
            x[o1] = Expected(S.REFUNDED_NO_REBUY, currency, a1, paid=a1, refunded=a1)
            x[o2] = Expected(S.PAID_VALID, currency, a2, paid=a2)
        elif kind == "chain":
            self.row(o1, student, course, a1, currency, t0, "refunded", refunded_at=t1)
            self.row(o2, student, course, a2, currency, t2, "refunded", refunded_at=t3)
            self.row(o3, student, course, a3, currency, t4, "paid")
            x[o1] = Expected(S.REFUNDED_NO_REBUY, currency, a1, paid=a1, refunded=a1)
            x[o2] = Expected(S.REFUNDED_REBOUGHT, currency, a2, paid=a2, refunded=a2, recovered=min(a2, a3), rebuy=o3)
            x[o3] = Expected(S.PAID_VALID, currency, a3, paid=a3)
        elif kind == "dispute_open":
            status = rng.choice(["needs_response", "under_review"])
            self.row(o1, student, course, a1, currency, t0, "paid", dispute=status, disputed_at=t1)
            x[o1] = Expected(S.DISPUTE_PENDING, currency, a1, paid=a1, open_dispute=a1)
        elif kind == "dispute_lost":
            self.row(o1, student, course, a1, currency, t0, "paid", dispute="lost", disputed_at=t1)
            x[o1] = Expected(S.REFUNDED_NO_REBUY, currency, a1, paid=a1, refunded=a1)
        elif kind == "gap_student":
            self.row(o1, "", course, a1, currency, t0, "paid")
            x[o1] = Expected(S.DATA_GAP, currency, a1, paid=a1)
        elif kind == "gap_ref":
            self.row(o1, student, course, a1, currency, t0, "refunded", refunded_at=t1, ref=None)
            x[o1] = Expected(S.DATA_GAP, currency, a1, paid=a1, refunded=a1)
        elif kind == "gap_line":
            self.row(o1, student, course, a1, currency, t0, "paid", dispute="under_review", disputed_at=t1, line=None)
            x[o1] = Expected(S.DATA_GAP, currency, a1, paid=a1, open_dispute=a1)
        elif kind == "failed":
            self.row(o1, student, course, a1, currency, t0, "failed")
            x[o1] = Expected(S.DATA_GAP, currency, a1)
        else:
            self.lines.append(f"{o1},{student},{course},0.001,{currency},{t0.isoformat()},paid,,,,,none,,,")
            self.bad_rows += 1

    def build(self, orders: int) -> bytes:
        k = 0
        while len(self.expected) + self.bad_rows < orders:
            k += 1
            self.story(k)
        self.rng.shuffle(self.lines)  # exports are not sorted by story
        return ("\ufeff" + HEADER + "\n" + "\n".join(self.lines) + "\n").encode("utf-8")


def sums(pairs: list[tuple[str, int]]) -> dict[str, Money]:
    totals: dict[str, int] = defaultdict(int)
    for currency, minor in pairs:
        totals[currency] += minor
    return {c: Money(amount=totals[c], currency=c) for c in sorted(totals)}


def decide_some(classified: list[KolableClassification], rng: random.Random) -> dict[str, RefundDecision]:
    """Decisions through the aggregate on a third of the orders that need one; some become stale."""
    decisions: dict[str, RefundDecision] = {}
    for c in classified:
        if c.status not in (S.REFUNDED_NO_REBUY, S.DISPUTE_PENDING, S.DATA_GAP) or rng.random() > 0.33:
            continue
        order = KolableOrder(c.order_id)
        order.record_classification(c, T0)
        kind = rng.choice(list(DecisionKind))
        decisions[c.order_id] = order.decide(kind, f"generated {kind}", actor="louis", role="approver", at=T0)
    return decisions


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_scorecard_equals_an_independent_computation_over_1000_generated_orders(seed: int) -> None:
    gen = Generator(seed)
    data = gen.build(1000)
    result = parse_export(data, "kolable-0512-0521.csv")
    assert result.rejected == gen.bad_rows and not result.file_errors
    assert len(result.rows) == len(gen.expected) and len(result.rows) + result.rejected >= 1000

    classified = classify(*inputs_from_rows(r.row for r in result.rows))
    got = {c.order_id: c for c in classified}
    assert set(got) == set(gen.expected)
    for oid, want in gen.expected.items():
        c = got[oid]
        assert (c.status, c.amount.amount, c.paid.amount, c.refunded.amount, c.recovered.amount,
                c.open_dispute.amount, c.rebuy_order_id) == (
            want.status, want.amount, want.paid, want.refunded, want.recovered, want.open_dispute, want.rebuy), oid

    rng = random.Random(seed)
    decisions = decide_some(classified, rng)
    # Make a few decisions stale: taken at another status than the order's current one.
    stale = set(rng.sample(sorted(decisions), k=min(5, len(decisions))))
    for oid in stale:
        decisions[oid] = decisions[oid].model_copy(update={"status_at_decision": S.PAID_VALID})
    card = scorecard(classified, decisions)

    # --- the independent computation, from the generator's expectations only ---
    exp = gen.expected
    assert card.orders == len(exp)
    for line in card.by_status:
        group = [e for e in exp.values() if e.status is line.status]
        assert line.count == len(group)
        assert line.amount == sums([(e.currency, e.amount) for e in group])
        assert line.paid == sums([(e.currency, e.paid) for e in group])
        assert line.refunded == sums([(e.currency, e.refunded) for e in group])
        assert line.recovered == sums([(e.currency, e.recovered) for e in group])
        assert line.open_dispute == sums([(e.currency, e.open_dispute) for e in group])
        assert line.cash_gap == sums([(e.currency, e.cash_gap) for e in group])
    assert card.cash_gap == sums([(e.currency, e.cash_gap) for e in exp.values()])
    assert card.cash_gap_refunds == sums([(e.currency, e.refunded - e.recovered) for e in exp.values()])
    assert card.cash_gap_disputes == sums([(e.currency, e.open_dispute) for e in exp.values()])
    assert card.recovered_by_rebuy == sums([(e.currency, e.recovered) for e in exp.values()])
    assert card.rebuys == sum(1 for e in exp.values() if e.rebuy)
    assert set(card.cash_gap) == {"TWD", "USD"}

    in_force = {oid for oid in decisions if oid not in stale}
    needing = {oid for oid, e in exp.items()
               if e.status in (S.DATA_GAP, S.DISPUTE_PENDING)
               or (e.status is S.REFUNDED_NO_REBUY and oid not in in_force)}
    assert {a.order_id for a in card.needing_action} == needing
    rank = {S.DATA_GAP: 0, S.DISPUTE_PENDING: 1, S.REFUNDED_NO_REBUY: 2}
    keys = [(rank[a.status], -a.cash_gap.amount, a.order_id) for a in card.needing_action]
    assert keys == sorted(keys)
    for a in card.needing_action:
        assert a.owner is {S.DATA_GAP: KolableRole.IMPORTER, S.DISPUTE_PENDING: KolableRole.RECONCILER,
                           S.REFUNDED_NO_REBUY: KolableRole.APPROVER}[a.status]
        assert (a.escalate_to is KolableRole.APPROVER) == (a.status is S.DATA_GAP)
    pursued = sorted(oid for oid in in_force if decisions[oid].decision is DecisionKind.PURSUE)
    assert [i.order_id for i in card.collection_list] == pursued
    assert [i.to_collect for i in card.collection_list] == [
        Money(amount=exp[o].cash_gap, currency=exp[o].currency) for o in pursued]
    counts = Counter(decisions[oid].decision for oid in in_force)
    assert {d.decision: d.count for d in card.decisions} == {k: counts[k] for k in DecisionKind}

    # Pure and deterministic: the same inputs in another order give the same scorecard.
    shuffled = classified[:]
    random.Random(0).shuffle(shuffled)
    assert scorecard(shuffled, decisions) == card


def test_re_importing_the_generated_file_changes_nothing() -> None:
    data = Generator(4).build(300)
    first, second = parse_export(data, "a.csv"), parse_export(data, "a.csv")
    orders = {r.order_id: KolableOrder(r.order_id) for r in first.rows}
    assert all(orders[r.order_id].record_import(r, import_id=first.import_id, role="importer", at=T0)
               for r in first.rows)
    for order in orders.values():
        order.mark_saved()
    recorded = [orders[r.order_id].record_import(r, import_id=second.import_id, role="importer", at=day(1))
                for r in second.rows]
    assert not any(recorded) and all(o.pending == [] for o in orders.values())
    event = second.completed_event(unchanged=len(second.rows), actor="wade", at=day(1))
    assert event.accepted == 0 and event.unchanged == len(second.rows)


def test_an_empty_scorecard_lists_every_status_with_zero() -> None:
    card = scorecard([])
    assert [(line.status, line.count) for line in card.by_status] == [(s, 0) for s in S]
    assert card.cash_gap == {} and card.needing_action == [] and card.collection_list == []


def test_one_classification_per_order() -> None:
    (c,) = classify([record("o1")], [charge("o1")])
    with pytest.raises(ValueError):
        scorecard([c, c])


# --- properties ---------------------------------------------------------------------------------


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[OrderRecord], list[PaymentFact]]:
    """A few students and courses, orders with random charges, refunds and disputes, some fields missing."""
    n = draw(st.integers(1, 12))
    records, facts = [], []
    for i in range(n):
        oid = f"o{i}"
        amount = draw(st.integers(1, 5000))
        t = draw(st.integers(0, 20))
        if draw(st.booleans()) or i == 0:
            records.append(OrderRecord(
                order_id=oid, amount=Money(amount=amount, currency="TWD"),
                student_id=draw(st.sampled_from(["s-1", "S-1", "s-2", None])),
                course_id=draw(st.sampled_from(["c-1", "c-2", None])), ordered_at=day(t),
                line_thread=draw(st.sampled_from(["l", None]))))
        outcome = draw(st.sampled_from(["paid", "paid", "failed", "pending", "none"]))
        if outcome == "paid":
            facts.append(PaymentFact(oid, FactKind.CHARGE_SUCCEEDED, amount=Money(amount=amount, currency="TWD"),
                                     at=day(t), reference=draw(st.sampled_from([f"ch_{oid}", None])),
                                     source="stripe"))
            for j in range(draw(st.integers(0, 2))):
                refunded = draw(st.integers(0, amount))
                facts.append(PaymentFact(oid, FactKind.REFUND, amount=Money(amount=refunded, currency="TWD"),
                                         at=day(t + draw(st.integers(0, 5))), reference=f"re_{oid}_{j}",
                                         source="stripe"))
            if draw(st.integers(0, 4)) == 0:
                facts.append(PaymentFact(oid, FactKind.DISPUTE, at=day(t + 1), reference=f"dp_{oid}",
                                         dispute_status=draw(st.sampled_from(
                                             [DisputeStatus.NEEDS_RESPONSE, DisputeStatus.UNDER_REVIEW,
                                              DisputeStatus.WON, DisputeStatus.LOST]))))
        elif outcome in ("failed", "pending"):
            facts.append(PaymentFact(oid, FactKind.CHARGE_FAILED if outcome == "failed" else FactKind.CHARGE_PENDING))
    return records, facts


@settings(max_examples=200, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_classification_and_scorecard_invariants(world: tuple[list[OrderRecord], list[PaymentFact]],
                                                 rng: random.Random) -> None:
    records, facts = world
    classified = classify(records, facts)
    by_id = {c.order_id: c for c in classified}
    assert set(by_id) == {r.order_id for r in records} | {f.order_id for f in facts}

    # Re-buy links are one-to-one, both ways, same student (case-insensitive) and course.
    linked = [c for c in classified if c.rebuy_order_id]
    assert len({c.rebuy_order_id for c in linked}) == len(linked)
    for c in linked:
        rebuy = by_id[c.rebuy_order_id]  # type: ignore[index]
        assert rebuy.recovers_order_id == c.order_id and rebuy.status is S.PAID_VALID
        assert (rebuy.student_id or "").casefold() == (c.student_id or "").casefold() and rebuy.course_id == c.course_id
        assert c.recovered.amount == min(rebuy.paid.amount, c.refunded.amount) > 0
    for c in classified:
        assert c.refunded.amount <= max(c.paid.amount, c.amount.amount)
        assert (c.status is S.REFUNDED_REBOUGHT) <= (c.rebuy_order_id is not None)

    card = scorecard(classified)
    assert sum(line.count for line in card.by_status) == len(classified)
    total = sum(line.cash_gap.get("TWD", twd(0)).amount for line in card.by_status)
    assert card.cash_gap.get("TWD", twd(0)).amount == total
    assert total == sum(c.refunded.amount - c.recovered.amount + c.open_dispute.amount for c in classified)

    shuffled_records, shuffled_facts = records[:], facts[:]
    rng.shuffle(shuffled_records)
    rng.shuffle(shuffled_facts)
    assert classify(shuffled_records, shuffled_facts) == classified


def test_refund_builder_defaults_are_a_full_refund_two_days_later() -> None:
    f = refund("o1")
    assert f.amount == twd(28000) and f.at == day(2)
