"""Classification: each status with its reason and next step, precedence, re-buy detection and edge cases."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from libs.domain.money import Money
from services.payments.domain.kolable.classify import (
    NEXT_STEPS,
    FactKind,
    OrderRecord,
    PaymentFact,
    classify,
    facts_from_row,
)
from services.payments.domain.kolable.events import DisputeStatus, KolableClassification, KolableRole
from services.payments.domain.kolable.events import ReconciliationStatus as S
from tests.unit.kolable import T0, charge, day, dispute, paid, record, refund, twd

Classified = dict[str, KolableClassification]


def run(records: list[OrderRecord], facts: list[PaymentFact]) -> Classified:
    return {c.order_id: c for c in classify(records, facts)}


# --- the five statuses: reason, next step (zh-TW and English), owner ----------------------------

SEED_NEXT_STEPS = {
    S.PAID_VALID: "納入交付名單,確認課綱升級接受度。",
    S.REFUNDED_NO_REBUY: "Huber 補原因;Louis 決定是否追補或關閉。",
    S.REFUNDED_REBOUGHT: "標記收入已恢復,保留證據避免重複追款。",
    S.DISPUTE_PENDING: "蒐集課程交付、溝通、退款政策、登入/使用證據。",
    S.DATA_GAP: "Wade 於 D1 補匯出欄位;逾期升級 Louis。",
}


@dataclass
class Case:
    records: list[OrderRecord]
    facts: list[PaymentFact]
    order: str
    status: S
    owner: KolableRole
    reason: list[str]  # fragments of the English reason
    reason_zh: list[str]
    cash_gap: int = 0  # TWD major units
    missing: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)


STATUS_CASES = {
    "paid_valid": Case(
        [record("o1")], [charge("o1", ref="pi_A")], "o1", S.PAID_VALID, KolableRole.RECONCILER,
        ["Paid TWD 28,000.00 on 2025-05-12 (ref pi_A)", "no refund and no open dispute"],
        ["付款成功 TWD 28,000.00", "無退刷、無未結爭議"]),
    "refunded_no_rebuy": Case(
        [record("o1")], [charge("o1"), refund("o1", at=day(2), ref="re_1")], "o1", S.REFUNDED_NO_REBUY,
        KolableRole.APPROVER,
        ["Fully refunded TWD 28,000.00 of TWD 28,000.00 paid, on 2025-05-14 (refund re_1)",
         "no qualifying re-buy of course c-1 by student s-1 after the refund"],
        ["全額退款 TWD 28,000.00", "退刷後學員 s-1 未重買課程 c-1"], cash_gap=28000),
    "refunded_rebought": Case(
        [record("o1"), record("o2", ordered=day(3))], [charge("o1"), refund("o1"), charge("o2", at=day(3))],
        "o1", S.REFUNDED_REBOUGHT, KolableRole.RECONCILER,
        ["re-bought course c-1 as order o2 (paid TWD 28,000.00 on 2025-05-15, ref pi_o2)",
         "recovered TWD 28,000.00"],
        ["學員 s-1 以訂單 o2 重買課程 c-1", "收入已恢復 TWD 28,000.00"], extra={"rebuy_order_id": "o2"}),
    "dispute_pending": Case(
        [record("o1")], [charge("o1"), dispute("o1", "needs_response", ref="dp_1")], "o1", S.DISPUTE_PENDING,
        KolableRole.RECONCILER,
        ["Dispute dp_1 is needs_response (since 2025-05-15)", "TWD 28,000.00 of TWD 28,000.00 paid is at stake"],
        ["金流爭議 dp_1 尚未結案(needs_response"], cash_gap=28000),
    "data_gap": Case(
        [record("o1", student=None)], [charge("o1", ref=None)], "o1", S.DATA_GAP, KolableRole.IMPORTER,
        ["Missing: student_id, payment_ref.", "Until then the known facts point to paid_valid."],
        ["缺欄位:student_id、payment_ref。"], missing=("student_id", "payment_ref"),
        extra={"provisional_status": S.PAID_VALID}),
}


@pytest.mark.parametrize("case", STATUS_CASES.values(), ids=STATUS_CASES.keys())
def test_each_status_with_its_reason_next_step_and_owner(case: Case) -> None:
    c = run(case.records, case.facts)[case.order]
    assert c.status is case.status
    assert c.next_step_zh == SEED_NEXT_STEPS[case.status]  # verbatim from the seed
    assert (c.next_step_zh, c.next_step_en) == NEXT_STEPS[case.status]
    assert c.owner is case.owner
    for fragment in case.reason:
        assert fragment in c.reason, (fragment, c.reason)
    for fragment in case.reason_zh:
        assert fragment in c.reason_zh, (fragment, c.reason_zh)
    assert c.cash_gap == twd(case.cash_gap)
    assert c.missing_fields == case.missing
    for name, value in case.extra.items():
        assert getattr(c, name) == value


def test_every_status_has_a_next_step_in_both_languages() -> None:
    assert set(NEXT_STEPS) == set(S)
    assert all(zh and en and zh != en for zh, en in NEXT_STEPS.values())


# --- precedence -------------------------------------------------------------------------------


@pytest.mark.parametrize("records, facts, status, provisional", [
    # data_gap beats an open dispute: the missing student id is named, the dispute kept as provisional
    ([record("o1", student=None)], [charge("o1"), dispute("o1", "under_review")], S.DATA_GAP, S.DISPUTE_PENDING),
    # an open dispute beats a (partial) refund
    ([record("o1")], [charge("o1"), refund("o1", amount=5000), dispute("o1", "needs_response")],
     S.DISPUTE_PENDING, None),
    # data_gap beats a re-buy; the recovery is still counted
    ([record("o1"), record("o2", ordered=day(3))],
     [charge("o1", ref=None), refund("o1"), charge("o2", at=day(3))], S.DATA_GAP, S.REFUNDED_REBOUGHT),
    # a re-buy beats "no re-buy" for the same refund
    ([record("o1"), record("o2", ordered=day(3))], [charge("o1"), refund("o1"), charge("o2", at=day(3))],
     S.REFUNDED_REBOUGHT, None),
    # a refund beats paid
    ([record("o1")], [charge("o1"), refund("o1", amount=1)], S.REFUNDED_NO_REBUY, None),
    # a missing LINE thread matters only where a decision is needed ...
    ([record("o1", line=None)], [charge("o1"), refund("o1")], S.DATA_GAP, S.REFUNDED_NO_REBUY),
    ([record("o1", line=None)], [charge("o1"), dispute("o1", "needs_response")], S.DATA_GAP, S.DISPUTE_PENDING),
    # ... not for a paid order or a recovered refund
    ([record("o1", line=None)], [charge("o1")], S.PAID_VALID, None),
    ([record("o1", line=None), record("o2", ordered=day(3), line=None)],
     [charge("o1"), refund("o1"), charge("o2", at=day(3))], S.REFUNDED_REBOUGHT, None),
], ids=["gap>dispute", "dispute>refund", "gap>rebought", "rebought>no_rebuy", "refund>paid",
        "line-needed-for-refund", "line-needed-for-dispute", "line-not-needed-paid", "line-not-needed-rebought"])
def test_precedence_when_several_rules_apply(records: list[OrderRecord], facts: list[PaymentFact], status: S,
                                            provisional: S | None) -> None:
    c = run(records, facts)["o1"]
    assert (c.status, c.provisional_status) == (status, provisional)


def test_a_data_gap_keeps_the_money_of_its_provisional_status() -> None:
    c = run([record("o1", student=None)], [charge("o1"), dispute("o1", "under_review")])["o1"]
    assert c.open_dispute == twd(28000) and c.cash_gap == twd(28000)
    assert "Dispute is under_review" in c.reason


# --- re-buy detection ---------------------------------------------------------------------------


def rebuy_case(**rebuy: object) -> Classified:
    """o1 bought at T0 and refunded on day 2; o2 is the possible re-buy (defaults: same student and course, day 3)."""
    when = rebuy.pop("when", day(3))
    assert isinstance(when, type(T0))
    r2, c2 = paid("o2", when, **rebuy)  # type: ignore[arg-type]
    return run([record("o1"), r2], [charge("o1"), refund("o1", at=day(2)), c2])


def test_same_student_same_course_after_the_refund_is_a_rebuy_linked_both_ways() -> None:
    out = rebuy_case()
    assert out["o1"].status is S.REFUNDED_REBOUGHT and out["o1"].rebuy_order_id == "o2"
    assert out["o2"].status is S.PAID_VALID and out["o2"].recovers_order_id == "o1"
    assert "It is the re-buy of refunded order o1." in out["o2"].reason
    assert (out["o1"].refunded, out["o1"].recovered, out["o1"].cash_gap) == (twd(28000), twd(28000), twd(0))


@pytest.mark.parametrize("rebuy, note", [
    ({"course": "c-2"}, None),
    ({"student": "s-2"}, None),
    ({"when": day(1)}, "o2 was bought before the refund (possibly a duplicate purchase), not a re-buy"),
], ids=["different-course", "different-student", "before-the-refund"])
def test_not_a_rebuy(rebuy: dict[str, object], note: str | None) -> None:
    out = rebuy_case(**rebuy)
    assert out["o1"].status is S.REFUNDED_NO_REBUY and out["o1"].rebuy_order_id is None
    assert out["o2"].status is S.PAID_VALID and out["o2"].recovers_order_id is None
    if note:
        assert note in out["o1"].reason
        assert "於退刷前購買" in out["o1"].reason_zh


def test_a_rebuy_at_the_very_instant_of_the_refund_counts() -> None:
    assert rebuy_case(when=day(2))["o1"].status is S.REFUNDED_REBOUGHT


def test_student_ids_match_regardless_of_case() -> None:
    r2, c2 = paid("o2", day(3), student="S-1")
    assert run([record("o1"), r2], [charge("o1"), refund("o1"), c2])["o1"].rebuy_order_id == "o2"


def test_a_rebuy_in_another_currency_is_not_matched() -> None:
    r2 = OrderRecord(order_id="o2", amount=Money(amount=100000, currency="USD"), student_id="s-1", course_id="c-1",
                     ordered_at=day(3), line_thread="l")
    c2 = PaymentFact("o2", FactKind.CHARGE_SUCCEEDED, amount=Money(amount=100000, currency="USD"), at=day(3),
                     reference="pi_2")
    assert run([record("o1"), r2], [charge("o1"), refund("o1"), c2])["o1"].status is S.REFUNDED_NO_REBUY


@pytest.mark.parametrize("extra, note", [
    ([refund("o2", at=day(4))], "bought again as o2, but that order was itself refunded"),
    ([refund("o2", amount=100, at=day(4))], "bought again as o2, but that order was itself refunded"),
    ([dispute("o2", "needs_response", at=day(4))], "bought again as o2, but that order is under dispute"),
], ids=["rebuy-refunded", "rebuy-partly-refunded", "rebuy-disputed"])
def test_a_rebuy_that_was_refunded_or_disputed_itself_does_not_count(extra: list[PaymentFact], note: str) -> None:
    out = run([record("o1"), record("o2", ordered=day(3))], [charge("o1"), refund("o1"), charge("o2", at=day(3)),
                                                             *extra])
    assert out["o1"].status is S.REFUNDED_NO_REBUY
    assert note in out["o1"].reason
    assert out["o1"].cash_gap == twd(28000)
    assert out["o2"].status in (S.REFUNDED_NO_REBUY, S.DISPUTE_PENDING)


def test_several_rebuys_link_the_earliest_and_name_the_others() -> None:
    out = run([record("o1"), record("o2", ordered=day(4)), record("o3", ordered=day(3))],
              [charge("o1"), refund("o1"), charge("o2", at=day(4)), charge("o3", at=day(3))])
    assert out["o1"].rebuy_order_id == "o3"
    assert "also bought later, not linked: o2" in out["o1"].reason
    assert out["o2"].status is S.PAID_VALID and out["o2"].recovers_order_id is None
    assert out["o3"].recovers_order_id == "o1"


def test_one_rebuy_recovers_one_refund_the_latest_one() -> None:
    # o1 and o2 both bought and refunded (duplicate seats); a single re-buy o3 recovers only one of them.
    out = run([record("o1"), record("o2", ordered=day(1)), record("o3", ordered=day(5))],
              [charge("o1"), refund("o1", at=day(2)), charge("o2", at=day(1)), refund("o2", at=day(3)),
               charge("o3", at=day(5))])
    assert out["o2"].status is S.REFUNDED_REBOUGHT and out["o2"].rebuy_order_id == "o3"
    assert out["o1"].status is S.REFUNDED_NO_REBUY
    assert "the later purchase o3 is already linked to another refund of this course" in out["o1"].reason
    assert sum(c.recovered.amount for c in out.values()) == twd(28000).amount


def test_a_chain_of_refund_and_rebuy_links_the_last_refund_to_the_final_purchase() -> None:
    # o1 refunded, re-bought as o2, o2 refunded, re-bought as o3: the student paid once, was refunded twice.
    out = run([record("o1"), record("o2", ordered=day(3)), record("o3", ordered=day(5))],
              [charge("o1"), refund("o1", at=day(2)), charge("o2", at=day(3)), refund("o2", at=day(4)),
               charge("o3", at=day(5))])
    assert (out["o1"].status, out["o2"].status, out["o3"].status) == (
        S.REFUNDED_NO_REBUY, S.REFUNDED_REBOUGHT, S.PAID_VALID)
    assert out["o2"].rebuy_order_id == "o3"
    assert "bought again as o2, but that order was itself refunded" in out["o1"].reason
    assert sum(c.cash_gap.amount for c in out.values()) == twd(28000).amount


@pytest.mark.parametrize("price, recovered, gap, phrase", [
    (20000, 20000, 8000, "TWD 8,000.00 is not recovered (the re-buy was cheaper)"),
    (32000, 28000, 0, None),
], ids=["cheaper", "dearer"])
def test_a_rebuy_at_another_price_recovers_at_most_the_refund(price: int, recovered: int, gap: int,
                                                             phrase: str | None) -> None:
    c = rebuy_case(amount=price)["o1"]
    assert c.status is S.REFUNDED_REBOUGHT
    assert (c.recovered, c.cash_gap) == (twd(recovered), twd(gap))
    if phrase:
        assert phrase in c.reason


def test_an_incomplete_possible_rebuy_makes_the_refund_a_data_gap() -> None:
    out = run([record("o1"), record("o2", ordered=day(3))], [charge("o1"), refund("o1"), charge("o2", at=day(3),
                                                                                               ref=None)])
    assert out["o2"].status is S.DATA_GAP and out["o2"].missing_fields == ("payment_ref",)
    assert out["o1"].status is S.DATA_GAP and out["o1"].missing_fields == ("o2.payment_ref",)
    assert out["o1"].provisional_status is S.REFUNDED_NO_REBUY
    assert "A possible re-buy (o2) is incomplete" in out["o1"].reason


def test_a_complete_rebuy_wins_over_an_incomplete_one() -> None:
    out = run([record("o1"), record("o2", ordered=day(3)), record("o3", ordered=day(4))],
              [charge("o1"), refund("o1"), charge("o2", at=day(3), ref=None), charge("o3", at=day(4))])
    assert out["o1"].status is S.REFUNDED_REBOUGHT and out["o1"].rebuy_order_id == "o3"


# --- partial refunds and disputes ---------------------------------------------------------------


def test_a_partial_refund_is_refunded_no_rebuy_for_the_refunded_part_and_never_matched() -> None:
    out = run([record("o1"), record("o2", ordered=day(3))],
              [charge("o1"), refund("o1", amount="1200.50"), charge("o2", at=day(3))])
    c = out["o1"]
    assert c.status is S.REFUNDED_NO_REBUY
    assert (c.paid, c.refunded, c.recovered, c.cash_gap) == (twd(28000), twd("1200.50"), twd(0), twd("1200.50"))
    assert "Partly refunded TWD 1,200.50 of TWD 28,000.00 paid" in c.reason
    assert "a partial refund is a price adjustment and is not matched with re-buys" in c.reason
    assert out["o2"].recovers_order_id is None


def test_partial_refunds_that_add_up_to_the_amount_are_a_full_refund() -> None:
    out = run([record("o1"), record("o2", ordered=day(3))],
              [charge("o1"), refund("o1", amount=8000, ref="re_1", at=day(1), source="stripe"),
               refund("o1", amount=20000, ref="re_2", at=day(2), source="stripe"), charge("o2", at=day(3))])
    assert out["o1"].status is S.REFUNDED_REBOUGHT


def test_a_lost_dispute_is_treated_as_refunded_and_can_be_rebought() -> None:
    lost = run([record("o1")], [charge("o1"), dispute("o1", "lost", at=day(5), ref="dp_1")])["o1"]
    assert lost.status is S.REFUNDED_NO_REBUY and lost.refunded == twd(28000) and lost.cash_gap == twd(28000)
    assert "taken back by the lost dispute dp_1" in lost.reason
    out = run([record("o1"), record("o2", ordered=day(6))],
              [charge("o1"), dispute("o1", "lost", at=day(5)), charge("o2", at=day(6))])
    assert out["o1"].status is S.REFUNDED_REBOUGHT


def test_a_won_dispute_is_paid_valid() -> None:
    c = run([record("o1")], [charge("o1"), dispute("o1", "won", ref="dp_1")])["o1"]
    assert c.status is S.PAID_VALID and c.cash_gap == twd(0)
    assert "Dispute dp_1 was won." in c.reason


def test_the_disputed_amount_never_exceeds_what_is_still_paid() -> None:
    c = run([record("o1")], [charge("o1"), refund("o1", amount=8000), dispute("o1", "under_review", amount=28000)])
    assert c["o1"].open_dispute == twd(20000) and c["o1"].cash_gap == twd(28000)


# --- data gaps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("records, facts, missing, provisional", [
    ([record("o1", student=None, course=None, ordered=None)], [charge("o1")],
     ("student_id", "course_id", "ordered_at"), S.PAID_VALID),
    ([record("o1")], [], ("payment_status",), None),
    ([record("o1")], [PaymentFact("o1", FactKind.CHARGE_FAILED)], ("payment (failed)",), None),
    ([record("o1")], [PaymentFact("o1", FactKind.CHARGE_PENDING)], ("payment (pending)",), None),
    ([record("o1")], [charge("o1", at=None)], ("paid_at",), S.PAID_VALID),
    ([record("o1")], [charge("o1"), refund("o1", amount=None)], ("refunded_amount",), S.REFUNDED_NO_REBUY),
    ([record("o1")], [charge("o1"), PaymentFact("o1", FactKind.REFUND, amount=twd(28000))], ("refunded_at",),
     S.REFUNDED_NO_REBUY),
    ([record("o1")], [charge("o1"), PaymentFact("o1", FactKind.DISPUTE, dispute_status=DisputeStatus.LOST)],
     ("disputed_at",), S.REFUNDED_NO_REBUY),
    ([], [charge("o1", source="stripe")], ("order_row",), S.PAID_VALID),
    ([record("o1")], [PaymentFact("o1", FactKind.CHARGE_SUCCEEDED, amount=Money(amount=1, currency="USD"),
                                  at=T0, reference="ch_1", source="stripe")], ("currency", "payment_status"), None),
], ids=["identity", "no-payment", "failed", "pending", "paid_at", "refund-amount", "refund-date", "lost-date",
        "order-row", "currency"])
def test_data_gaps_name_the_missing_fields(records: list[OrderRecord], facts: list[PaymentFact],
                                           missing: tuple[str, ...], provisional: S | None) -> None:
    (c,) = classify(records, facts)
    assert c.status is S.DATA_GAP
    assert set(c.missing_fields) == set(missing)
    assert c.provisional_status is provisional
    assert c.owner is KolableRole.IMPORTER


def test_an_order_known_only_from_payments_is_a_gap_with_its_money() -> None:
    (c,) = classify([], [charge("o9", source="stripe"), refund("o9", source="stripe", ref="re_9")])
    assert c.status is S.DATA_GAP and "order_row" in c.missing_fields
    assert c.amount == twd(28000) and c.cash_gap == twd(28000)
    assert "Payments were reported for an order that is not in the export." in c.reason
    assert "金流有紀錄,但匯出檔沒有這筆訂單。" in c.reason_zh


# --- merging facts from the export and from the payment provider ------------------------------


def test_the_provider_replaces_the_export_for_each_family_of_facts() -> None:
    # The export (a snapshot) says paid; Stripe has since reported a refund.
    out = run([record("o1")], [charge("o1"), refund("o1", source="stripe", ref="re_1", at=day(4))])
    assert out["o1"].status is S.REFUNDED_NO_REBUY
    # The export says refunded 5,000 but Stripe reports the refund as 8,000: Stripe's figure is used.
    out = run([record("o1")], [charge("o1"), refund("o1", amount=5000), refund("o1", amount=8000, ref="re_1",
                                                                                 source="stripe")])
    assert out["o1"].refunded == twd(8000)


def test_facts_reported_twice_count_once() -> None:
    twice = [charge("o1", source="stripe", ref="ch_1"), charge("o1", source="stripe", ref="ch_1"),
             refund("o1", amount=1000, ref="re_1", source="stripe"), refund("o1", amount=1000, ref="re_1",
                                                                               source="stripe"),
             refund("o1", amount=500), refund("o1", amount=500)]
    c = run([record("o1")], twice)["o1"]
    assert (c.paid, c.refunded) == (twd(28000), twd(1000))


@pytest.mark.parametrize("reverse", [False, True])
def test_the_latest_report_of_a_dispute_wins_whatever_the_arrival_order(reverse: bool) -> None:
    updates = [dispute("o1", "needs_response", at=day(3), ref="dp_1", source="stripe"),
               dispute("o1", "under_review", at=day(4), ref="dp_1", source="stripe"),
               dispute("o1", "won", at=day(9), ref="dp_1", source="stripe")]
    facts = [charge("o1"), *(reversed(updates) if reverse else updates)]
    assert run([record("o1")], facts)["o1"].status is S.PAID_VALID


def test_the_output_does_not_depend_on_the_input_order() -> None:
    records = [record("o1"), record("o2", ordered=day(3)), record("o3", student="s-2"), record("o4", ordered=day(4))]
    facts = [charge("o1"), refund("o1"), charge("o2", at=day(3)), charge("o3"), dispute("o3", "under_review"),
             charge("o4", at=day(4))]
    expected = classify(records, facts)
    rng = random.Random(7)
    for _ in range(10):
        rng.shuffle(records)
        rng.shuffle(facts)
        assert classify(records, facts) == expected
    assert [c.order_id for c in expected] == ["o1", "o2", "o3", "o4"]


def test_an_order_listed_twice_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        classify([record("o1"), record("o1")], [])


@pytest.mark.parametrize("kwargs", [
    {"kind": FactKind.DISPUTE},
    {"kind": FactKind.REFUND, "dispute_status": "won"},
    {"kind": FactKind.CHARGE_SUCCEEDED},
    {"kind": FactKind.REFUND, "amount": Money(amount=-1, currency="TWD")},
    {"kind": FactKind.REFUND, "at": T0.replace(tzinfo=None)},
    {"kind": "chargeback"},
], ids=["dispute-without-status", "status-on-refund", "charge-without-amount", "negative", "naive", "unknown-kind"])
def test_malformed_payment_facts_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PaymentFact("o1", **kwargs)  # type: ignore[arg-type]


def test_facts_from_an_imported_row() -> None:
    from services.payments.domain.kolable.importer import parse_export
    from tests.unit.kolable import csv_bytes

    data = csv_bytes("K-1,s-1,c-1,28000,TWD,2025-05-12,partially_refunded,2025-05-12,pi_1,100,2025-05-13,lost,"
                     "2025-05-20,l-1,")
    (imported,) = parse_export(data, "a.csv").rows
    kinds = [(f.kind, f.amount, f.reference) for f in facts_from_row(imported.row)]
    assert kinds == [(FactKind.CHARGE_SUCCEEDED, twd(28000), "pi_1"), (FactKind.REFUND, twd(100), None),
                     (FactKind.DISPUTE, None, None)]
