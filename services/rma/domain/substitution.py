"""Choosing the replacement unit (seed 001, cases 3, 4 and 12). Pure functions of the catalogue, a
stock snapshot and what was already refused; the result carries its explanation.

The order in which candidates are tried:
1. the same SKU, when it is sold (not end of life);
2. the approver's alternative, after a refusal (approved by that decision);
3. the substitution rules of the SKU: active ones whose alternative is in the catalogue and sold, with
   a price delta within the price ceiling, ranked by the highest feature score, then the lowest price
   delta, then the SKU (so that the choice never depends on the order of the rules).
A candidate refused by the approver is not tried again. For each candidate in turn:
- no unit at the RMA's warehouse and none at any other warehouse whose answer for that SKU was not
  already a refusal -> the next candidate (`no_stock`);
- a substitute whose price delta is above the approval threshold (strictly: equal to it needs no
  approval) and that no approver approved -> wait for the approver (before any stock moves);
- in stock at the RMA's warehouse -> ready (the unit is reserved);
- otherwise -> a transfer from the warehouse with the most units (then the lowest id).
None left -> unavailable (waits for stock and a retry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from libs.domain.money import Money
from services.rma.domain.catalogue import CatalogueItemSpec, SubstitutionPolicy
from services.rma.domain.events import (
    CandidateStatus,
    ReplacementSource,
    RmaReplacementDecision,
    RmaSubstitutionCandidate,
)

RULE = ("the same SKU when it is sold and in stock; otherwise the active substitute with the highest feature "
        "score, then the lowest price delta (then the SKU), within the price ceiling; a substitute costing more than "
        "the approval threshold waits for an approver")


def needs_approval(price_delta: Money, threshold: Money) -> bool:
    """Strictly above the threshold needs an approver; at the threshold it does not."""
    return price_delta > threshold


def rank_substitutes(spec: CatalogueItemSpec, items: Mapping[str, CatalogueItemSpec],
                     ceiling: Money) -> list[RmaSubstitutionCandidate]:
    """Every substitution rule of the SKU evaluated: the eligible ones first, best first (status `ranked`,
    with `rank`), then the excluded ones with the reason (inactive, not in the catalogue, end of life,
    over the price ceiling)."""
    eligible: list[RmaSubstitutionCandidate] = []
    excluded: list[RmaSubstitutionCandidate] = []
    for rule in spec.substitutes:
        base = {"sku": rule.alt_sku, "feature_score": rule.feature_score, "price_delta": rule.price_delta,
                "active": rule.active}
        alt = items.get(rule.alt_sku)
        if not rule.active:
            excluded.append(RmaSubstitutionCandidate(**base, status=CandidateStatus.INACTIVE, note="rule inactive"))
        elif alt is None:
            excluded.append(RmaSubstitutionCandidate(**base, status=CandidateStatus.NOT_IN_CATALOGUE,
                                                     note=f"{rule.alt_sku} is not in the catalogue"))
        elif alt.eol:
            excluded.append(RmaSubstitutionCandidate(**base, status=CandidateStatus.END_OF_LIFE,
                                                     note=f"{rule.alt_sku} is end of life too"))
        elif rule.price_delta > ceiling:
            excluded.append(RmaSubstitutionCandidate(**base, status=CandidateStatus.OVER_PRICE_CEILING,
                                                     note=f"price delta {rule.price_delta} over the ceiling {ceiling}"))
        else:
            eligible.append(RmaSubstitutionCandidate(**base, status=CandidateStatus.RANKED))
    eligible.sort(key=lambda c: (-(c.feature_score or 0), c.price_delta.amount, c.sku))
    ranked = [c.model_copy(update={"rank": i}) for i, c in enumerate(eligible, start=1)]
    return ranked + excluded


def best_substitute(spec: CatalogueItemSpec, items: Mapping[str, CatalogueItemSpec],
                    ceiling: Money) -> RmaSubstitutionCandidate | None:
    """The best eligible substitute, regardless of stock (None if there is none)."""
    ranked = [c for c in rank_substitutes(spec, items, ceiling) if c.status is CandidateStatus.RANKED]
    return ranked[0] if ranked else None


@dataclass(frozen=True)
class ReplacementContext:
    original_sku: str
    original: CatalogueItemSpec
    items: Mapping[str, CatalogueItemSpec]  # the catalogue entries of the alternatives (missing = unknown)
    policy: SubstitutionPolicy
    home_warehouse: str
    stock: Mapping[tuple[str, str], int]  # (warehouse, sku) -> units available
    refused_by_approver: frozenset[str] = frozenset()
    approved: frozenset[str] = frozenset()
    refused_sources: frozenset[tuple[str, str]] = frozenset()  # (sku, warehouse) whose transfer was refused
    preferred: str | None = None  # the approver's alternative


@dataclass(frozen=True)
class ReplacementPlan:
    kind: Literal["ready", "transfer", "awaiting_approval", "unavailable"]
    decision: RmaReplacementDecision | None
    candidates: list[RmaSubstitutionCandidate] = field(default_factory=list)
    reason: str = ""


def _sources(ctx: ReplacementContext, sku: str) -> list[str]:
    """Other warehouses with a unit of `sku` that did not refuse it: most units first, then by id."""
    found = [(n, wh) for (wh, s), n in ctx.stock.items()
             if s == sku and wh != ctx.home_warehouse and n > 0 and (sku, wh) not in ctx.refused_sources]
    return [wh for _, wh in sorted(found, key=lambda x: (-x[0], x[1]))]


def plan_replacement(ctx: ReplacementContext) -> ReplacementPlan:
    """Choose the replacement; see the module docstring for the order and the rules."""
    currency = ctx.original.price.currency
    zero = Money.zero(currency)
    ceiling = ctx.policy.ceiling_for(ctx.original)
    threshold = ctx.policy.threshold_for(ctx.original)
    ranked = rank_substitutes(ctx.original, ctx.items, ceiling)

    tries: list[tuple[RmaSubstitutionCandidate, bool]] = []  # (candidate, chosen by the approver)
    listed: list[RmaSubstitutionCandidate] = []  # candidates that are never tried, with their reason
    same = RmaSubstitutionCandidate(sku=ctx.original_sku, same_sku=True, price_delta=zero,
                                    status=CandidateStatus.RANKED)
    if ctx.original.eol:
        listed.append(same.model_copy(update={"status": CandidateStatus.END_OF_LIFE,
                                              "note": f"{ctx.original_sku} is end of life"}))
    else:
        tries.append((same, False))
    if ctx.preferred and ctx.preferred != ctx.original_sku:
        rule = next((c for c in ranked if c.sku == ctx.preferred), None)
        alt = ctx.items.get(ctx.preferred)
        delta = rule.price_delta if rule else (alt.price - ctx.original.price if alt else zero)
        tries.append((RmaSubstitutionCandidate(sku=ctx.preferred, feature_score=rule.feature_score if rule else None,
                                               price_delta=delta, status=CandidateStatus.RANKED,
                                               note="the approver's alternative"), True))
    for c in ranked:
        if c.sku == ctx.preferred:
            continue
        if c.sku in ctx.refused_by_approver:
            listed.append(c.model_copy(update={"status": CandidateStatus.REFUSED_BY_APPROVER,
                                               "note": "refused by the approver"}))
        elif c.status is CandidateStatus.RANKED:
            tries.append((c, False))
        else:
            listed.append(c)

    evaluated: list[RmaSubstitutionCandidate] = []
    for i, (cand, by_approver) in enumerate(tries):
        home = ctx.stock.get((ctx.home_warehouse, cand.sku), 0)
        sources = _sources(ctx, cand.sku)
        if home <= 0 and not sources:
            refused = sorted(wh for s, wh in ctx.refused_sources if s == cand.sku)
            note = "no unit in any warehouse" + (f" (refused by {', '.join(refused)})" if refused else "")
            evaluated.append(cand.model_copy(update={"status": CandidateStatus.NO_STOCK, "note": note}))
            continue
        approval = (not cand.same_sku and not by_approver and cand.sku not in ctx.approved
                    and needs_approval(cand.price_delta, threshold))
        source = ReplacementSource.LOCAL if home > 0 else ReplacementSource.TRANSFER
        warehouse = ctx.home_warehouse if home > 0 else sources[0]
        chosen = cand.model_copy(update={"status": CandidateStatus.CHOSEN})
        rest = [c for c, _ in tries[i + 1:]]
        candidates = [*evaluated, chosen, *rest, *listed]
        where = (f"in stock at {warehouse} ({home})" if home > 0
                 else f"none at {ctx.home_warehouse}: a transfer from {warehouse}")
        if cand.same_sku:
            why = f"the same SKU {cand.sku} is sold and available, {where}"
        else:
            lead = f"{ctx.original_sku} is end of life" if ctx.original.eol else f"{ctx.original_sku} has no unit"
            score = f"feature score {cand.feature_score}, " if cand.feature_score is not None else ""
            how = "the approver's alternative" if by_approver else f"rank {cand.rank} of the substitutes"
            why = f"{lead}; {cand.sku} chosen ({how}: {score}price delta {cand.price_delta}), {where}"
        if approval:
            why += (f"; the price delta {cand.price_delta} is over the approval threshold {threshold}: "
                    "an approver decides")
        decision = RmaReplacementDecision(
            sku=cand.sku, original_sku=ctx.original_sku, same_sku=cand.same_sku,
            chosen_by="approver" if by_approver else "rules", source=source, warehouse_id=warehouse,
            price_delta=cand.price_delta, price_ceiling=ceiling, approval_threshold=threshold,
            needs_approval=approval, rule=RULE, explanation=why[:500], candidates=candidates)
        kind: Literal["ready", "transfer", "awaiting_approval"] = (
            "awaiting_approval" if approval else ("ready" if home > 0 else "transfer"))
        return ReplacementPlan(kind, decision, candidates, why)
    candidates = [*evaluated, *listed]
    tried = ", ".join(c.sku for c in evaluated) or "none"
    return ReplacementPlan("unavailable", None, candidates,
                           f"no candidate has a unit available (tried: {tried}); waiting for stock")
