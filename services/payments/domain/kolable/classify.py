"""Classify every Kolable order as one of the seed's five statuses, with the reason, next step and owner.

Inputs are neutral: `OrderRecord` (who bought which course, when, for how much; from the export)
and `PaymentFact` (a charge, refund or dispute of an order, from the export or from a payment
provider such as Stripe). `facts_from_row` turns an imported row into facts; another component
turns provider events into facts. Nothing here does I/O or reads the clock.

## Rules (the seed's 判定), in precedence order

1. **data_gap** -- a field needed for the decision is missing (named in `missing_fields`):
   the order row itself (payments exist for an order missing from the export), student_id,
   course_id, ordered_at, the payment outcome (none reported, still pending, or failed), the
   payment_ref or paid_at of a charge, the amount or date of a refund, the date a lost dispute
   took the money, a consistent currency, and -- for an order that will need a decision
   (refunded without re-buy, or under dispute) -- the LINE thread, the record of what the student
   was told. An unmatched refunded order whose possible re-buy is itself incomplete is a gap too
   (`o-2.payment_ref`).
2. **dispute_pending** -- a dispute that is not closed (needs_response, under_review).
3. **refunded_rebought** -- fully refunded (refunds plus lost disputes cover what was paid) and
   the same student bought the same course again, at or after the refund, in an order that is
   paid, has no refund at all, no open or lost dispute and no data gap of its own. That order's
   id is linked both ways.
4. **refunded_no_rebuy** -- refunded (fully or partly, including a lost dispute) with no re-buy.
5. **paid_valid** -- paid, no refund, no open dispute (a won dispute is a closed dispute).

Why this order: data_gap first, because every other verdict could be wrong without the missing
field (without the student id we cannot see a re-buy, so "no re-buy" would send Louis chasing a
student who already paid again) -- the seed sends gaps to Wade before anything else. An open
dispute comes next because the card network, not Kolable, now decides where the money goes: it
has an evidence deadline, and collecting or closing meanwhile would be premature. A re-buy is a
refinement of "refunded" (the same refund, with the money back), so it is tested before
refunded_no_rebuy. paid_valid is what remains when nothing is wrong. A data_gap keeps the
status the known facts point to in `provisional_status`, and its amounts, so that the scorecard's
cash gap does not hide money behind a missing column.

## Edge cases, as decided

- Partial refund: refunded_no_rebuy (the refunded part is the cash gap). It is never matched with
  a re-buy: the student kept the course; a later purchase is not a re-purchase of it.
- Re-buy refunded itself (even partly) or disputed: not a re-buy; the original stays
  refunded_no_rebuy, and its reason names the order that did not count.
- Several re-buys: one re-buy recovers one refund. Per student and course, refunds are matched
  latest first, each with the earliest unused qualifying purchase at or after it; this matches as
  many refunds as possible (the candidate sets are nested). Unlinked purchases stay paid_valid and
  are named in the reason.
- Purchase before the refund: not a re-buy (the seed says 退刷後重買); the reason names it, since
  it is often a duplicate purchase whose refund needs no collection -- Louis decides.
- Re-buy at a different price: recovered = min(re-buy paid, refunded). A cheaper re-buy (a
  discount code) leaves the difference in the cash gap; a dearer one (the upgraded curriculum)
  recovers the whole refund.
- Dispute lost: the money is gone, as if refunded (it counts in `refunded`, can be re-bought).
  Dispute won: closed in Kolable's favour; paid_valid when nothing else applies.
- Failed or pending payment: data_gap ("payment (failed)", "payment (pending)"): there is no
  paid order to reconcile, and Wade confirms whether the money came some other way.
- Timing: a re-buy counts when it was paid at or after the refund (same instant included);
  a date without a time is 00:00 Asia/Taipei (importer).

## Merging facts from several sources

Per order and family (charges, refunds, disputes) the facts of a payment provider (any source
other than "import") replace the export's: the provider is the system of record for money, the
export a snapshot. Within a source, facts with the same reference are one fact reported again
(the latest wins; for disputes, the latest, then the furthest along); facts without a reference
are deduplicated by equality.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from libs.domain.money import Money
from services.payments.domain.kolable.events import (
    DisputeStatus,
    KolableClassification,
    KolableOrderRow,
    KolableRole,
    PaymentStatus,
    ReconciliationStatus,
)

__all__ = [
    "DECISION_STATUSES",
    "ESCALATION",
    "IMPORT_SOURCE",
    "NEXT_STEPS",
    "OWNERS",
    "FactKind",
    "OrderRecord",
    "PaymentFact",
    "classify",
    "facts_from_row",
    "inputs_from_rows",
]

S = ReconciliationStatus
IMPORT_SOURCE = "import"
DEFAULT_CURRENCY = "TWD"  # only for an order known from facts that carry no amount at all
DISPLAY_TZ = ZoneInfo("Asia/Taipei")

# The seed's 下一步, verbatim, and in English.
NEXT_STEPS: dict[ReconciliationStatus, tuple[str, str]] = {
    S.PAID_VALID: ("納入交付名單,確認課綱升級接受度。",
                   "Add the student to the delivery list; confirm they accept the curriculum upgrade."),
    S.REFUNDED_NO_REBUY: ("Huber 補原因;Louis 決定是否追補或關閉。",
                          "Huber adds the refund reason; Louis decides whether to pursue the money or close the case."),
    S.REFUNDED_REBOUGHT: ("標記收入已恢復,保留證據避免重複追款。",
                          "Mark the revenue as recovered; keep the evidence so that the student is not chased twice."),
    S.DISPUTE_PENDING: ("蒐集課程交付、溝通、退款政策、登入/使用證據。",
                        "Collect the evidence: course delivery, communications, refund policy, login/usage records."),
    S.DATA_GAP: ("Wade 於 D1 補匯出欄位;逾期升級 Louis。",
                 "Wade fills in the missing export fields (due D1); if overdue, escalate to Louis."),
}

# Who owns the next step. refunded_no_rebuy belongs to the approver: Huber's reason is input to
# Louis's decision, and the decision is what closes the item.
OWNERS: dict[ReconciliationStatus, KolableRole] = {
    S.PAID_VALID: KolableRole.RECONCILER,
    S.REFUNDED_NO_REBUY: KolableRole.APPROVER,
    S.REFUNDED_REBOUGHT: KolableRole.RECONCILER,
    S.DISPUTE_PENDING: KolableRole.RECONCILER,
    S.DATA_GAP: KolableRole.IMPORTER,
}
ESCALATION: dict[ReconciliationStatus, KolableRole] = {S.DATA_GAP: KolableRole.APPROVER}  # 逾期升級 Louis

# The statuses on which the approver may decide (追補 / 關閉 / 升級).
DECISION_STATUSES: frozenset[ReconciliationStatus] = frozenset(
    {S.REFUNDED_NO_REBUY, S.DISPUTE_PENDING, S.DATA_GAP})


class FactKind(StrEnum):
    CHARGE_SUCCEEDED = "charge_succeeded"
    CHARGE_FAILED = "charge_failed"
    CHARGE_PENDING = "charge_pending"
    REFUND = "refund"
    DISPUTE = "dispute"


CHARGE_KINDS = (FactKind.CHARGE_SUCCEEDED, FactKind.CHARGE_FAILED, FactKind.CHARGE_PENDING)


@dataclass(frozen=True)
class PaymentFact:
    """One thing that happened to an order's money, from any source.

    - charge_succeeded: `amount` charged (required), `at` when, `reference` the charge or payment
      intent id;
    - charge_failed / charge_pending: a payment attempt that failed or has no outcome yet;
    - refund: `amount` refunded (None = unknown), `at`, `reference` the refund id;
    - dispute: `dispute_status` (required), `amount` disputed (None = what is paid and not
      refunded), `at` when it was opened or last changed, `reference` the dispute id.
    `source` is "import" for facts from the export, else the provider ("stripe").

    A fact the provider reported but that cannot be used as it is (a currency we do not support)
    names the field it leaves missing in `gap` and why in `gap_reason`; it counts no money, and
    the order becomes a data_gap.
    """

    order_id: str
    kind: FactKind
    source: str = IMPORT_SOURCE
    amount: Money | None = None
    at: datetime | None = None
    reference: str | None = None
    dispute_status: DisputeStatus | None = None
    gap: str | None = None
    gap_reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FactKind(self.kind))
        if self.dispute_status is not None:
            object.__setattr__(self, "dispute_status", DisputeStatus(self.dispute_status))
        if not self.order_id or not self.source:
            raise ValueError("order_id and source are required")
        if self.kind is FactKind.DISPUTE and self.dispute_status in (None, DisputeStatus.NONE):
            raise ValueError("a dispute fact needs its dispute_status")
        if self.kind is not FactKind.DISPUTE and self.dispute_status is not None:
            raise ValueError("only a dispute fact has a dispute_status")
        if self.kind is FactKind.CHARGE_SUCCEEDED and self.amount is None and self.gap is None:
            raise ValueError("a successful charge needs its amount")
        if self.amount is not None and self.amount.amount < 0:
            raise ValueError("amount must not be negative")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("at must carry a UTC offset")


@dataclass(frozen=True)
class OrderRecord:
    """An order: who bought which course, when, for how much.

    From the export (`source` "import"), or, for an order the export does not list (yet), from
    the payment provider's metadata (`source` "stripe": Kolable's checkout writes order_id,
    student_id and course_id on the payment). The LINE thread is an export column: it is asked
    for only of an exported order. `amount` is None when the provider's amount is unusable (a
    currency we do not support: that fact is then a data gap).
    """

    order_id: str
    amount: Money | None
    student_id: str | None = None
    course_id: str | None = None
    ordered_at: datetime | None = None
    line_thread: str | None = None
    notes: str | None = None
    source: str = IMPORT_SOURCE

    @classmethod
    def from_row(cls, row: KolableOrderRow) -> OrderRecord:
        return cls(order_id=row.order_id, amount=row.amount, student_id=row.student_id, course_id=row.course_id,
                   ordered_at=row.ordered_at, line_thread=row.line_thread, notes=row.notes)


def facts_from_row(row: KolableOrderRow) -> list[PaymentFact]:
    """The payment facts an export row states (source "import")."""
    facts: list[PaymentFact] = []
    status = row.payment_status
    if status is None:
        return facts
    if status.charged:
        facts.append(PaymentFact(row.order_id, FactKind.CHARGE_SUCCEEDED, amount=row.amount, at=row.paid_at,
                                 reference=row.payment_ref))
    elif status is PaymentStatus.FAILED:
        facts.append(PaymentFact(row.order_id, FactKind.CHARGE_FAILED, at=row.paid_at, reference=row.payment_ref))
    else:
        facts.append(PaymentFact(row.order_id, FactKind.CHARGE_PENDING, reference=row.payment_ref))
    if status.refunded:
        facts.append(PaymentFact(row.order_id, FactKind.REFUND, amount=row.refunded_amount, at=row.refunded_at))
    if row.dispute_status is not DisputeStatus.NONE:
        facts.append(PaymentFact(row.order_id, FactKind.DISPUTE, at=row.disputed_at,
                                 dispute_status=row.dispute_status))
    return facts


def inputs_from_rows(rows: Iterable[KolableOrderRow]) -> tuple[list[OrderRecord], list[PaymentFact]]:
    """Orders and facts from the latest imported row of each order."""
    records: list[OrderRecord] = []
    facts: list[PaymentFact] = []
    for row in rows:
        records.append(OrderRecord.from_row(row))
        facts.extend(facts_from_row(row))
    return records, facts


# --- per-order ledger ---------------------------------------------------------------------


def _student_key(student_id: str) -> str:
    # Student ids are often emails: matched without regard to case.
    return student_id.strip().casefold()


@dataclass
class _Dispute:
    reference: str | None
    status: DisputeStatus
    amount: int | None
    at: datetime | None


@dataclass
class _Ledger:
    """What is known about one order's money, merged from its facts.

    The cached properties are read only once the ledger is complete (after `_ledger`).
    """

    order_id: str
    record: OrderRecord | None
    currency: str
    charge: Literal["succeeded", "failed", "pending"] | None = None
    paid: int = 0
    paid_at: datetime | None = None
    payment_refs: list[str] = field(default_factory=list)
    refunds: int = 0  # number of refunds reported
    refunded: int = 0  # sum of the known refund amounts
    refund_refs: list[str] = field(default_factory=list)
    refund_amount_unknown: bool = False
    refund_at: datetime | None = None
    refund_at_unknown: bool = False
    disputes: list[_Dispute] = field(default_factory=list)
    foreign_currencies: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    gap_reasons: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str] | None:
        """Same student, same course, same currency: what a re-buy must share with its refund."""
        if self.record is None or self.record.student_id is None or self.record.course_id is None:
            return None
        return _student_key(self.record.student_id), self.record.course_id, self.currency

    def _dispute_amount(self, d: _Dispute, base: int) -> int:
        return min(d.amount if d.amount is not None else base, base)

    @property
    def ceiling(self) -> int:
        """The most that can go back: what was paid; the order amount while no charge is known."""
        if self.charge == "succeeded":
            return self.paid
        if self.record is not None and self.record.amount is not None:
            return self.record.amount.amount
        return self.refunded

    @cached_property
    def lost(self) -> int:
        base = max(self.ceiling - self.refunded, 0)
        return min(sum(self._dispute_amount(d, base) for d in self.disputes if d.status is DisputeStatus.LOST), base)

    @cached_property
    def money_back(self) -> int:
        """Money that went back to the student: refunds and lost disputes, never more than was paid."""
        return min(self.ceiling, self.refunded + self.lost)

    @cached_property
    def open_dispute(self) -> int:
        base = max(self.ceiling - self.money_back, 0)
        return min(sum(self._dispute_amount(d, base) for d in self.disputes if d.status.is_open), base)

    @cached_property
    def open_disputes(self) -> list[_Dispute]:
        return [d for d in self.disputes if d.status.is_open]

    @cached_property
    def has_refund(self) -> bool:
        return self.refunds > 0 or any(d.status is DisputeStatus.LOST for d in self.disputes)

    @cached_property
    def money_back_at(self) -> datetime | None:
        """When the last money went back; None when a date is unknown."""
        lost = [d for d in self.disputes if d.status is DisputeStatus.LOST]
        if (self.refunds and self.refund_at_unknown) or any(d.at is None for d in lost):
            return None
        times = [t for t in [self.refund_at, *(d.at for d in lost)] if t is not None]
        return max(times) if times else None

    @cached_property
    def fully_back(self) -> bool:
        return self.paid > 0 and self.money_back >= self.paid and not self.refund_amount_unknown

    @property
    def bought_at(self) -> datetime | None:
        return self.paid_at

    def money(self, minor: int) -> Money:
        return _money(minor, self.currency)

    def text(self, minor: int) -> str:
        """`money(minor).format()`, remembered per value (the reasons name the same amounts again and again)."""
        return _money_text(minor, self.currency)


@lru_cache(maxsize=4096)
def _money(minor: int, currency: str) -> Money:
    """Money is immutable, so one instance per value can be shared: a classification builds six amounts per
    order and a provider fact classifies the student's orders again, so building each one anew (pydantic
    validation) was about half of `classify`'s time. An invalid value still raises (nothing is cached)."""
    return Money(amount=minor, currency=currency)


@lru_cache(maxsize=4096)
def _money_text(minor: int, currency: str) -> str:
    return _money(minor, currency).format()


def _latest(facts: Iterable[PaymentFact]) -> PaymentFact:
    def order(f: PaymentFact) -> tuple[bool, datetime, int]:
        rank = f.dispute_status.rank if f.dispute_status is not None else 0
        return f.at is not None, f.at or datetime.min.replace(tzinfo=UTC), rank
    return max(facts, key=order)


def _dedupe(facts: Sequence[PaymentFact]) -> list[PaymentFact]:
    by_ref: dict[tuple[str, str, str], list[PaymentFact]] = defaultdict(list)
    plain: list[PaymentFact] = []
    for f in facts:
        if f.reference is None:
            if f not in plain:
                plain.append(f)
        else:
            kind = "dispute" if f.kind is FactKind.DISPUTE else f.kind.value
            by_ref[(f.source, kind, f.reference)].append(f)
    return [_latest(group) for group in by_ref.values()] + plain


def _family(facts: Sequence[PaymentFact]) -> list[PaymentFact]:
    """The provider's facts when it reported any, else the export's; deduplicated."""
    provider = [f for f in facts if f.source != IMPORT_SOURCE]
    return _dedupe(provider or facts)


def _ledger(order_id: str, record: OrderRecord | None, facts: Sequence[PaymentFact]) -> _Ledger:
    if record is not None and record.amount is not None:
        currency = record.amount.currency
    else:
        currencies = sorted({f.amount.currency for f in facts if f.amount is not None})
        currency = currencies[0] if currencies else DEFAULT_CURRENCY
    ledger = _Ledger(order_id=order_id, record=record, currency=currency)
    usable: list[PaymentFact] = []
    unusable_charge = False
    for f in facts:
        if f.gap is not None:
            if f.gap not in ledger.gaps:
                ledger.gaps.append(f.gap)
            if f.gap_reason and f.gap_reason not in ledger.gap_reasons:
                ledger.gap_reasons.append(f.gap_reason)
            unusable_charge = unusable_charge or f.kind in CHARGE_KINDS
        elif f.amount is not None and f.amount.currency != currency:
            ledger.foreign_currencies.append(f.amount.currency)
        else:
            usable.append(f)

    charges = _family([f for f in usable if f.kind in CHARGE_KINDS])
    succeeded = [f for f in charges if f.kind is FactKind.CHARGE_SUCCEEDED]
    if succeeded:
        ledger.charge = "succeeded"
        ledger.paid = sum(f.amount.amount for f in succeeded if f.amount is not None)
        times = [f.at for f in succeeded if f.at is not None]
        ledger.paid_at = min(times) if times else None
        ledger.payment_refs = sorted({f.reference for f in succeeded if f.reference})
    elif any(f.kind is FactKind.CHARGE_PENDING for f in charges):
        ledger.charge = "pending"
    elif charges:
        ledger.charge = "failed"

    refunds = _family([f for f in usable if f.kind is FactKind.REFUND])
    ledger.refunds = len(refunds)
    ledger.refunded = sum(f.amount.amount for f in refunds if f.amount is not None)
    ledger.refund_amount_unknown = any(f.amount is None for f in refunds)
    ledger.refund_refs = sorted({f.reference for f in refunds if f.reference})
    times = [f.at for f in refunds if f.at is not None]
    ledger.refund_at = max(times) if times else None
    ledger.refund_at_unknown = any(f.at is None for f in refunds)
    ledger.refunded = min(ledger.refunded, ledger.ceiling)

    for f in _family([f for f in usable if f.kind is FactKind.DISPUTE]):
        assert f.dispute_status is not None
        ledger.disputes.append(_Dispute(f.reference, f.dispute_status,
                                        f.amount.amount if f.amount is not None else None, f.at))
    ledger.disputes.sort(key=lambda d: (d.reference or "", d.status.value))

    gaps = ledger.gaps
    if record is None:
        gaps.append("order_row")
    else:
        gaps.extend(name for name in ("student_id", "course_id", "ordered_at") if getattr(record, name) is None)
    if ledger.charge is None:
        if not unusable_charge:  # a charge was reported, in a form we cannot use: that gap is named already
            gaps.append("payment_status")
    elif ledger.charge in ("pending", "failed"):
        gaps.append(f"payment ({ledger.charge})")
    else:
        if not ledger.payment_refs:
            gaps.append("payment_ref")
        if ledger.paid_at is None:
            gaps.append("paid_at")
    if ledger.refund_amount_unknown:
        gaps.append("refunded_amount")
    if ledger.refund_at_unknown:
        gaps.append("refunded_at")
    if any(d.status is DisputeStatus.LOST and d.at is None for d in ledger.disputes):
        gaps.append("disputed_at")
    if ledger.foreign_currencies and "currency" not in gaps:
        gaps.append("currency")
    return ledger


# --- re-buy matching ----------------------------------------------------------------------


@dataclass
class _Match:
    """What the re-buy search found for one refunded order."""

    rebuy: str | None = None
    recovered: int = 0
    incomplete: list[str] = field(default_factory=list)  # candidate re-buys with gaps: "o-2.payment_ref"
    notes_en: list[str] = field(default_factory=list)
    notes_zh: list[str] = field(default_factory=list)


def _clean_purchase(led: _Ledger) -> bool:
    """Qualifies as a re-buy: paid, never refunded, no open or lost dispute, nothing missing."""
    return (led.charge == "succeeded" and led.paid > 0 and not led.has_refund and not led.open_disputes
            and not led.gaps and led.bought_at is not None)


def _match_rebuys(ledgers: dict[str, _Ledger]) -> tuple[dict[str, _Match], dict[str, str]]:
    groups: dict[tuple[str, str, str], list[_Ledger]] = defaultdict(list)
    for led in ledgers.values():
        if led.key is not None:
            groups[led.key].append(led)
    matches: dict[str, _Match] = {}
    recovers: dict[str, str] = {}  # re-buy order -> the refunded order it recovers
    for key in sorted(groups):
        members = groups[key]
        refunded = [m for m in members if m.has_refund and not m.open_disputes]
        if not refunded:
            continue
        clean = sorted((m for m in members if _clean_purchase(m)),
                       key=lambda m: (m.bought_at, m.order_id))
        eligible = [m for m in refunded if m.fully_back and m.money_back_at is not None]
        # Latest refund first, each taking the earliest unused purchase at or after it: the candidate
        # sets are nested (a later refund's are a subset of an earlier one's), so this greedy choice
        # links as many refunds as possible, and deterministically.
        eligible.sort(key=lambda m: (m.money_back_at, m.order_id), reverse=True)
        used: set[str] = set()
        for orig in eligible:
            assert orig.money_back_at is not None
            for cand in clean:
                assert cand.bought_at is not None
                if cand.order_id not in used and cand.bought_at >= orig.money_back_at:
                    used.add(cand.order_id)
                    recovers[cand.order_id] = orig.order_id
                    matches[orig.order_id] = _Match(rebuy=cand.order_id, recovered=min(cand.paid, orig.money_back))
                    break
        for orig in refunded:
            match = matches.setdefault(orig.order_id, _Match())
            _explain(orig, match, members, clean, used)
    return matches, recovers


def _ids(ledgers: Iterable[_Ledger], limit: int = 3) -> str:
    ids = [led.order_id for led in ledgers]
    shown = ", ".join(ids[:limit])
    return shown + (f" (+{len(ids) - limit})" if len(ids) > limit else "")


def _explain(orig: _Ledger, match: _Match, members: list[_Ledger], clean: list[_Ledger], used: set[str]) -> None:
    """Name the other purchases of the same course and why they are not (this order's) re-buy."""
    others = [m for m in members if m.order_id != orig.order_id and m.order_id != match.rebuy]
    since = orig.money_back_at
    en, zh = match.notes_en, match.notes_zh
    if match.rebuy is not None:
        later = [m for m in clean if m.order_id not in used and since is not None and m.bought_at
                 and m.bought_at >= since]
        if later:
            en.append(f"also bought later, not linked: {_ids(later)}")
            zh.append(f"之後另有購買(未連結):{_ids(later)}")
        return
    if not orig.fully_back:
        if orig.refund_amount_unknown:
            return  # a data gap already
        en.append("a partial refund is a price adjustment and is not matched with re-buys")
        zh.append("部分退款視為價差調整,不比對重買")
        return
    if since is None:
        return  # refunded_at / disputed_at missing: a data gap already

    def possibly_after(m: _Ledger) -> bool:
        # Unknown timing counts as "possibly after": such an order can still turn out to be the re-buy.
        when = m.bought_at or (m.record.ordered_at if m.record is not None else None)
        return when is None or since is None or when >= since

    after = [m for m in others if m.charge != "failed" and possibly_after(m)]
    taken = [m for m in after if m.order_id in used]
    refunded_again = [m for m in after if m.has_refund and m.order_id not in used]
    disputed = [m for m in after if m.open_disputes and not m.has_refund]
    incomplete = [m for m in after if m.gaps and not m.has_refund and not m.open_disputes and m.order_id not in used]
    before = [m for m in others if _clean_purchase(m) and m.bought_at is not None and m.bought_at < since]
    if taken:
        en.append(f"the later purchase {_ids(taken)} is already linked to another refund of this course")
        zh.append(f"之後的購買 {_ids(taken)} 已對應同課程的另一筆退刷")
    if refunded_again:
        en.append(f"bought again as {_ids(refunded_again)}, but that order was itself refunded")
        zh.append(f"曾以 {_ids(refunded_again)} 重買,但該單也已退款")
    if disputed:
        en.append(f"bought again as {_ids(disputed)}, but that order is under dispute")
        zh.append(f"曾以 {_ids(disputed)} 重買,但該單爭議未結")
    if before:
        en.append(f"{_ids(before)} was bought before the refund (possibly a duplicate purchase), not a re-buy")
        zh.append(f"{_ids(before)} 於退刷前購買(可能為重複購買),不算重買")
    for m in incomplete:
        match.incomplete.extend(f"{m.order_id}.{gap}" for gap in m.gaps)


# --- reasons ------------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _date(moment: datetime) -> str:
    """The day in Taipei (remembered: the reasons of a student's orders name the same moments each time)."""
    return moment.astimezone(DISPLAY_TZ).strftime("%Y-%m-%d")


def _day(moment: datetime | None) -> str:
    return _date(moment) if moment else "date unknown"


def _day_zh(moment: datetime | None) -> str:
    return _date(moment) if moment else "日期不明"


def _refs(refs: Sequence[str]) -> str:
    return ", ".join(refs) if refs else "-"


def _dispute_name(refs: Iterable[str | None]) -> str:
    named = [r for r in refs if r]
    return " " + ", ".join(named) if named else ""


def _who(led: _Ledger) -> tuple[str, str]:
    rec = led.record
    return (rec.student_id or "?") if rec else "?", (rec.course_id or "?") if rec else "?"


def _refund_text(led: _Ledger) -> tuple[str, str]:
    back, paid = led.text(led.money_back), led.text(led.paid)
    full = led.fully_back
    en = f"{'Fully' if full else 'Partly'} refunded {back} of {paid} paid, on {_day(led.money_back_at)}"
    zh = f"{'全額' if full else '部分'}退款 {back}(實付 {paid},{_day_zh(led.money_back_at)})"
    if led.refund_refs:
        en += f" (refund {_refs(led.refund_refs)})"
        zh += f"(退款 {_refs(led.refund_refs)})"
    lost = [d for d in led.disputes if d.status is DisputeStatus.LOST]
    if lost:
        ref = _dispute_name(d.reference for d in lost)
        en += f", including {led.text(led.lost)} taken back by the lost dispute{ref}"
        zh += f",含爭議{ref}{' ' if ref else ''}敗訴被扣回 {led.text(led.lost)}"
    return en, zh


def _status_text(status: ReconciliationStatus, led: _Ledger, match: _Match | None,
                 ledgers: dict[str, _Ledger], recovers: str | None) -> tuple[str, str]:
    student, course = _who(led)
    if status is S.DISPUTE_PENDING:
        parts_en, parts_zh = [], []
        for d in led.open_disputes:
            ref = _dispute_name([d.reference])
            parts_en.append(f"Dispute{ref} is {d.status.value} (since {_day(d.at)})")
            parts_zh.append(f"金流爭議{ref}{' ' if ref else ''}尚未結案({d.status.value},{_day_zh(d.at)})")
        amount = led.text(led.open_dispute)
        en = "; ".join(parts_en) + f": {amount} of {led.text(led.paid)} paid is at stake."
        zh = ";".join(parts_zh) + f",爭議金額 {amount}(實付 {led.text(led.paid)})。"
        if led.has_refund:
            ren, rzh = _refund_text(led)
            en += f" {ren}."
            zh += f"{rzh}。"
        return en, zh
    if status is S.REFUNDED_REBOUGHT:
        assert match is not None and match.rebuy is not None
        rebuy = ledgers[match.rebuy]
        ren, rzh = _refund_text(led)
        rec = led.text(match.recovered)
        en = (f"{ren}; student {student} re-bought course {course} as order {rebuy.order_id} "
              f"(paid {rebuy.text(rebuy.paid)} on {_day(rebuy.paid_at)}, ref {_refs(rebuy.payment_refs)}); "
              f"recovered {rec}.")
        zh = (f"{rzh};學員 {student} 以訂單 {rebuy.order_id} 重買課程 {course}"
              f"(付款 {rebuy.text(rebuy.paid)},{_day_zh(rebuy.paid_at)},{_refs(rebuy.payment_refs)});"
              f"收入已恢復 {rec}。")
        residual = led.money_back - match.recovered
        if residual:
            en += f" {led.text(residual)} is not recovered (the re-buy was cheaper)."
            zh += f"差額 {led.text(residual)} 未恢復(重買金額較低)。"
    elif status is S.REFUNDED_NO_REBUY:
        ren, rzh = _refund_text(led)
        en = f"{ren}; no qualifying re-buy of course {course} by student {student} after the refund."
        zh = f"{rzh};退刷後學員 {student} 未重買課程 {course}。"
    else:  # paid_valid
        en = (f"Paid {led.text(led.paid)} on {_day(led.paid_at)} (ref {_refs(led.payment_refs)}); "
              "no refund and no open dispute.")
        zh = (f"付款成功 {led.text(led.paid)}({_day_zh(led.paid_at)},{_refs(led.payment_refs)}),"
              "無退刷、無未結爭議。")
        won = [d.reference for d in led.disputes if d.status is DisputeStatus.WON]
        if won:
            en += f" Dispute{_dispute_name(won)} was won."
            zh += f"爭議{_dispute_name(won)}{' ' if any(won) else ''}已勝訴。"
        if recovers:
            en += f" It is the re-buy of refunded order {recovers}."
            zh += f"此單為退刷訂單 {recovers} 的重買。"
    if match is not None and match.notes_en:
        en += " Note: " + "; ".join(match.notes_en) + "."
        zh += "備註:" + ";".join(match.notes_zh) + "。"
    return en, zh


def _gap_text(led: _Ledger, missing: Sequence[str], provisional: ReconciliationStatus | None) -> tuple[str, str]:
    en = [f"Missing: {', '.join(missing)}."]
    zh = [f"缺欄位:{'、'.join(missing)}。"]
    if "order_row" in missing:
        en.append("Payments were reported for an order that is not in the export.")
        zh.append("金流有紀錄,但匯出檔沒有這筆訂單。")
    if "payment (failed)" in missing:
        en.append("The payment failed; no successful charge is recorded.")
        zh.append("付款失敗,無成功扣款紀錄。")
    if "payment (pending)" in missing:
        en.append("The payment is still pending.")
        zh.append("付款仍在處理中。")
    if "currency" in missing and led.foreign_currencies:
        foreign = ", ".join(sorted(set(led.foreign_currencies)))
        en.append(f"Payment facts in {foreign} do not match the order's {led.currency}.")
        zh.append(f"金流幣別 {foreign} 與訂單幣別 {led.currency} 不符。")
    for reason in led.gap_reasons:
        en.append(f"The payment provider reported: {reason}.")
        zh.append(f"金流端資料無法使用:{reason}。")
    rebuys = sorted({m.split(".", 1)[0] for m in missing if "." in m})
    if rebuys:
        en.append(f"A possible re-buy ({', '.join(rebuys)}) is incomplete, so the refund cannot be judged yet.")
        zh.append(f"可能的重買訂單({'、'.join(rebuys)})資料不全,無法判定是否已重買。")
    if provisional is not None:
        en.append(f"Until then the known facts point to {provisional.value}.")
        zh.append(f"補齊前,依現有資料判定為 {provisional.value}。")
    return " ".join(en), "".join(zh)


# --- entry point --------------------------------------------------------------------------


def classify(orders: Sequence[OrderRecord], payments: Sequence[PaymentFact]) -> list[KolableClassification]:
    """One classification per order id found in `orders` or `payments`, sorted by order id.

    Deterministic: the same inputs in any order give the same output. A duplicated order id in
    `orders` is a caller error (ValueError): pass the latest row of each order.
    """
    records: dict[str, OrderRecord] = {}
    for rec in orders:
        if rec.order_id in records:
            raise ValueError(f"order {rec.order_id} is listed twice")
        records[rec.order_id] = rec
    facts: dict[str, list[PaymentFact]] = defaultdict(list)
    for fact in payments:
        facts[fact.order_id].append(fact)
    ledgers = {oid: _ledger(oid, records.get(oid), facts.get(oid, [])) for oid in sorted(set(records) | set(facts))}
    matches, recovers = _match_rebuys(ledgers)
    return [_classify_one(led, matches.get(oid), recovers.get(oid), ledgers) for oid, led in ledgers.items()]


def _classify_one(led: _Ledger, match: _Match | None, recovers: str | None,
                  ledgers: dict[str, _Ledger]) -> KolableClassification:
    if led.open_disputes:
        provisional: ReconciliationStatus | None = S.DISPUTE_PENDING
    elif led.has_refund:
        provisional = S.REFUNDED_REBOUGHT if match is not None and match.rebuy else S.REFUNDED_NO_REBUY
    elif led.charge == "succeeded":
        provisional = S.PAID_VALID
    else:
        provisional = None
    missing = list(led.gaps)
    if provisional is S.REFUNDED_NO_REBUY and match is not None:
        missing.extend(match.incomplete)
    needs_decision = provisional in (S.REFUNDED_NO_REBUY, S.DISPUTE_PENDING)
    if (needs_decision and led.record is not None and led.record.source == IMPORT_SOURCE
            and led.record.line_thread is None):
        missing.append("line_thread")

    rebuy = match.rebuy if match is not None and provisional is S.REFUNDED_REBOUGHT else None
    recovered = match.recovered if match is not None and rebuy is not None else 0
    refunded, open_dispute = led.money_back, led.open_dispute
    if missing:
        status = S.DATA_GAP
        en, zh = _gap_text(led, missing, provisional)
        if provisional is not None:
            pen, pzh = _status_text(provisional, led, match, ledgers, recovers)
            en, zh = f"{en} {pen}", f"{zh}{pzh}"
    else:
        assert provisional is not None  # no successful charge is always a gap
        status, provisional = provisional, None
        en, zh = _status_text(status, led, match, ledgers, recovers)
    next_zh, next_en = NEXT_STEPS[status]
    rec = led.record
    return KolableClassification(
        order_id=led.order_id, status=status, provisional_status=provisional, reason=en, reason_zh=zh,
        next_step_zh=next_zh, next_step_en=next_en, owner=OWNERS[status], missing_fields=tuple(missing),
        student_id=rec.student_id if rec else None, course_id=rec.course_id if rec else None,
        rebuy_order_id=rebuy,
        recovers_order_id=recovers,
        amount=rec.amount if rec is not None and rec.amount is not None else led.money(led.paid),
        paid=led.money(led.paid),
        refunded=led.money(refunded), recovered=led.money(recovered), open_dispute=led.money(open_dispute),
        cash_gap=led.money(refunded - recovered + open_dispute))
