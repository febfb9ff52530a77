"""The replacement choice and the approval threshold (seed 001, cases 3, 4 and 12), table-driven: the
same SKU when sold and in stock; otherwise the best substitute by feature score, then price delta,
within the price ceiling; over the threshold an approver decides; no stock -> a transfer, the next
source, the next candidate (compensation); the decision carries its explanation."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from libs.domain.money import Money
from services.rma.domain.catalogue import CatalogueItemSpec
from services.rma.domain.events import CandidateStatus, ReplacementSource
from services.rma.domain.substitution import best_substitute, needs_approval, plan_replacement, rank_substitutes
from tests.unit.rma import CATALOGUE, HOME, NEW, OLD, OUTLET, POLICY, PRO, RETAIL, context, rule, spec, twd

SOLD = "MS-SOLD"  # a SKU still sold, with the newer model as a substitute


@dataclass(frozen=True)
class Case:
    stock: dict[tuple[str, str], int]
    kind: str
    sku: str | None = None
    warehouse: str | None = None
    needs_approval: bool = False
    same_sku: bool = False
    sku_of_rma: str = OLD
    items: dict[str, CatalogueItemSpec] | None = None
    extra: dict[str, object] = field(default_factory=dict)


CASES = {
    "same SKU sold and in stock at the RMA's warehouse": Case(
        {(HOME, SOLD): 1, (HOME, NEW): 5}, "ready", SOLD, HOME, same_sku=True, sku_of_rma=SOLD),
    "same SKU sold, only in another warehouse: a transfer of the same SKU": Case(
        {(RETAIL, SOLD): 1, (HOME, NEW): 5}, "transfer", SOLD, RETAIL, same_sku=True, sku_of_rma=SOLD),
    "same SKU sold but no unit anywhere: the best substitute": Case(
        {(HOME, NEW): 1}, "ready", NEW, HOME, sku_of_rma=SOLD),
    "EOL: the highest feature score wins, over the threshold: approval": Case(
        {(HOME, NEW): 1, (HOME, PRO): 1}, "awaiting_approval", PRO, HOME, needs_approval=True),
    "EOL: the approved substitute is reserved": Case(
        {(HOME, NEW): 1, (HOME, PRO): 1}, "ready", PRO, HOME, extra={"approved": frozenset({PRO})}),
    "EOL: no stock of the best: the next candidate (compensation)": Case(
        {(HOME, NEW): 1}, "ready", NEW, HOME),
    "EOL: the best only elsewhere: approval first, before any stock moves": Case(
        {(RETAIL, PRO): 3, (HOME, NEW): 1}, "awaiting_approval", PRO, RETAIL, needs_approval=True),
    "EOL: approved, only elsewhere: a transfer": Case(
        {(RETAIL, PRO): 3}, "transfer", PRO, RETAIL, extra={"approved": frozenset({PRO})}),
    "EOL: refused by the approver: the next candidate": Case(
        {(HOME, NEW): 1, (HOME, PRO): 1}, "ready", NEW, HOME, extra={"refused_by_approver": frozenset({PRO})}),
    "EOL: the approver's alternative comes first and needs no further approval": Case(
        {(HOME, NEW): 1, (HOME, PRO): 1}, "ready", PRO, HOME,
        extra={"refused_by_approver": frozenset({NEW}), "preferred": PRO}),
    "EOL: the approver's alternative without stock: the remaining candidates": Case(
        {(HOME, NEW): 1}, "ready", NEW, HOME, extra={"refused_by_approver": frozenset({PRO}), "preferred": "MS-X"},
        items={**CATALOGUE, "MS-X": spec()}),
    "EOL: a refused source: the next source": Case(
        {(RETAIL, NEW): 5, (OUTLET, NEW): 1}, "transfer", NEW, OUTLET,
        extra={"refused_sources": frozenset({(NEW, RETAIL)})}),
    "EOL: every source of the approved best refused: the next candidate": Case(
        {(RETAIL, PRO): 1, (OUTLET, NEW): 1}, "transfer", NEW, OUTLET,
        extra={"approved": frozenset({PRO}), "refused_sources": frozenset({(PRO, RETAIL)})}),
    "EOL: no unit of any candidate anywhere: unavailable": Case({(HOME, OLD): 3}, "unavailable"),
    "transfer source: the most units, then the lowest id": Case(
        {(RETAIL, NEW): 2, (OUTLET, NEW): 2, ("wh-zzz", NEW): 1}, "transfer", NEW, OUTLET,
        extra={"refused_by_approver": frozenset({PRO})}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_replacement_choice(case: Case) -> None:
    items = case.items or {**CATALOGUE, SOLD: spec(subs=[rule(NEW, 80, 0)])}
    p = plan_replacement(context(case.stock, sku=case.sku_of_rma, items=items, **case.extra))
    assert p.kind == case.kind, p.reason
    if case.kind == "unavailable":
        assert p.decision is None and {c.status for c in p.candidates} <= {
            CandidateStatus.NO_STOCK, CandidateStatus.END_OF_LIFE}
        return
    d = p.decision
    assert d is not None
    assert (d.sku, d.warehouse_id, d.needs_approval, d.same_sku) == (case.sku, case.warehouse, case.needs_approval,
                                                                     case.same_sku)
    assert d.source is (ReplacementSource.LOCAL if case.warehouse == HOME else ReplacementSource.TRANSFER)
    assert [c.sku for c in d.candidates if c.status is CandidateStatus.CHOSEN] == [case.sku]
    assert d.explanation and d.rule and d.original_sku == case.sku_of_rma
    assert d.price_ceiling == twd(100000) and d.approval_threshold == twd(20000)


def test_the_decision_lists_every_candidate_with_its_scores_and_fate() -> None:
    items = {**CATALOGUE,
             OLD: spec(eol=True, subs=[rule(NEW, 80, 0), rule(PRO, 95, 40000), rule("MS-GONE", 99, 0),
                                       rule("MS-EOL2", 90, 0), rule("MS-GOLD", 99, 150000),
                                       rule("MS-WIRED", 40, -80000, active=False)]),
             "MS-EOL2": spec(eol=True), "MS-GOLD": spec(price=279000), "MS-WIRED": spec(price=49000)}
    p = plan_replacement(context({(HOME, NEW): 1}, items=items))
    assert p.decision is not None
    fate = {c.sku: (c.status, c.rank, c.feature_score, c.price_delta.amount) for c in p.decision.candidates}
    assert fate == {
        OLD: (CandidateStatus.END_OF_LIFE, None, None, 0),
        PRO: (CandidateStatus.NO_STOCK, 1, 95, 40000),
        NEW: (CandidateStatus.CHOSEN, 2, 80, 0),
        "MS-GONE": (CandidateStatus.NOT_IN_CATALOGUE, None, 99, 0),
        "MS-EOL2": (CandidateStatus.END_OF_LIFE, None, 90, 0),
        "MS-GOLD": (CandidateStatus.OVER_PRICE_CEILING, None, 99, 150000),
        "MS-WIRED": (CandidateStatus.INACTIVE, None, 40, -80000),
    }
    assert "MS-OLD is end of life" in p.decision.explanation and "rank 2" in p.decision.explanation


RANKING = [
    pytest.param([rule("A", 80, 0), rule("B", 95, 40000)], "B", id="highest feature score"),
    pytest.param([rule("A", 90, 5000), rule("B", 90, 1000)], "B", id="same score: lowest price delta"),
    pytest.param([rule("B", 90, 1000), rule("A", 90, 1000)], "A", id="same score and delta: lowest SKU"),
    pytest.param([rule("A", 90, -5000), rule("B", 90, 0)], "A", id="a cheaper substitute (negative delta)"),
    pytest.param([rule("A", 99, 100001), rule("B", 10, 0)], "B", id="over the price ceiling: excluded"),
    pytest.param([rule("A", 99, 100000), rule("B", 10, 0)], "A", id="at the price ceiling: eligible"),
    pytest.param([rule("A", 99, 0, active=False), rule("B", 10, 0)], "B", id="inactive rule: excluded"),
    pytest.param([rule("A", 99, 0, active=False)], None, id="nothing eligible"),
]


@pytest.mark.parametrize(("rules", "best"), RANKING)
def test_best_substitute(rules: list, best: str | None) -> None:
    items = {"A": spec(), "B": spec()}
    chosen = best_substitute(spec(eol=True, subs=rules), items, twd(100000))
    assert (chosen.sku if chosen else None) == best
    assert [c.rank for c in rank_substitutes(spec(eol=True, subs=rules), items, twd(100000))
            if c.status is CandidateStatus.RANKED] == list(range(1, 1 + sum(
                1 for r in rules if r.active and r.price_delta.amount <= 100000)))


THRESHOLD = [
    pytest.param(19999, 20000, False, id="below the threshold"),
    pytest.param(20000, 20000, False, id="at the threshold: no approval"),
    pytest.param(20001, 20000, True, id="one minor unit over: approval"),
    pytest.param(0, 0, False, id="same price, zero threshold"),
    pytest.param(1, 0, True, id="any extra cost, zero threshold"),
    pytest.param(-5000, 0, False, id="cheaper"),
]


@pytest.mark.parametrize(("delta", "threshold", "expected"), THRESHOLD)
def test_approval_threshold(delta: int, threshold: int, expected: bool) -> None:
    assert needs_approval(twd(delta), twd(threshold)) is expected
    items = {**CATALOGUE, OLD: spec(eol=True, subs=[rule(NEW, 80, delta)], threshold=threshold)}
    p = plan_replacement(context({(HOME, NEW): 1}, items=items))
    assert p.kind == ("awaiting_approval" if expected else "ready")
    assert p.decision is not None and p.decision.approval_threshold == twd(threshold)


def test_the_same_sku_never_needs_approval_and_the_policy_defaults_apply_without_an_override() -> None:
    items = {**CATALOGUE, SOLD: spec(subs=[rule(PRO, 95, 90000)])}
    p = plan_replacement(context({(HOME, SOLD): 1}, sku=SOLD, items=items))
    assert p.kind == "ready" and p.decision is not None and not p.decision.needs_approval
    assert p.decision.price_delta == Money.zero("TWD")
    assert POLICY.ceiling_for(items[SOLD]) == twd(100000)


def test_a_per_sku_ceiling_overrides_the_policy() -> None:
    items = {**CATALOGUE, OLD: spec(eol=True, subs=[rule(NEW, 80, 0), rule(PRO, 95, 40000)], ceiling=30000)}
    p = plan_replacement(context({(HOME, NEW): 1, (HOME, PRO): 1}, items=items))
    assert p.decision is not None and p.decision.sku == NEW and p.decision.price_ceiling == twd(30000)
