"""The internal payment ledger against what the payment provider reported, per order (issue 5).

Both sides come from the replay (a shadow schema), so the check is a function of the event store:
- ours: rm_ledger_entries (card captures and money to return, chargebacks, refunds made at the
  provider, from each order's transaction stream) and rm_refunds (the card refunds closeloop
  requested, with the provider refund id once the provider accepted them);
- theirs: rm_upstream_facts (charges, refunds, disputes as Stripe reported them). A refund or a
  dispute names only the charge or the PaymentIntent; its order is found through the charges
  that named both (the same index the payments service keeps).

Rules (each finding names the order and both amounts):
- ledger_charge_missing: the provider captured a payment for an order the ledger never took
  (neither as a capture nor as money to return);
- ledger_capture_missing_upstream: the ledger took a card payment the provider never reported;
- ledger_amount_mismatch / ledger_currency_mismatch: a payment, refund or chargeback both sides
  know, with different amounts or currencies;
- ledger_refund_missing_upstream: a card refund closeloop counts as accepted or succeeded (or a
  refund it recorded from the provider) that the provider never reported;
- ledger_refund_missing: a refund the provider made (succeeded) that closeloop knows nothing of;
- ledger_refund_status_mismatch: succeeded on one side, failed / pending on the other (the
  provider's latest report of the refund, by the time it happened);
- ledger_chargeback_missing / ledger_chargeback_missing_upstream: a dispute the provider closed
  as lost without a chargeback in the ledger, or the reverse;
- ledger_upstream_data_gap: a provider fact that cannot be applied as it is (an unsupported
  currency, no order), which nobody will reconcile unless it is reported;
- refund_above_paid: per order, refunds + chargebacks + refunds at the provider above the money the
  customer paid, by closeloop's books or by the provider's reports.
Kolable course orders (metadata course_id, or a kolable-{order} stream) are reconciled by the Kolable
war room (payments/application/kolable.py): they are left out here and counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg


@dataclass
class Finding:
    kind: str
    key: str
    summary: str
    order_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "order_id": self.order_id, "summary": self.summary,
                "details": self.details}


def _money(amount: int | None, currency: str | None) -> dict[str, Any] | None:
    return None if amount is None else {"amount": amount, "currency": currency}


def _fmt(m: dict[str, Any] | None) -> str:
    return "nothing" if m is None else f"{m['currency']} {m['amount']}"


def _facts(s: str) -> str:
    """The provider's facts with their order resolved (named, or through a charge / PaymentIntent
    that named it), and whether the order is a Kolable course order."""
    return f"""
        refs AS (
            SELECT DISTINCT ON (pid) pid, order_id FROM (
                SELECT charge_id AS pid, order_id, last_position FROM {s}.rm_upstream_facts
                 WHERE order_id IS NOT NULL AND charge_id IS NOT NULL
                UNION ALL
                SELECT payment_intent_id, order_id, last_position FROM {s}.rm_upstream_facts
                 WHERE order_id IS NOT NULL AND payment_intent_id IS NOT NULL) x
             ORDER BY pid, last_position),
        resolved AS (
            SELECT f.*, coalesce(f.order_id, rc.order_id, ri.order_id, rr.order_id) AS oid
              FROM {s}.rm_upstream_facts f
              LEFT JOIN refs rc ON rc.pid = f.charge_id
              LEFT JOIN refs ri ON ri.pid = f.payment_intent_id
              LEFT JOIN {s}.rm_refunds rr ON rr.refund_id = f.closeloop_refund_id),
        kolable AS (
            SELECT DISTINCT oid FROM resolved r
             WHERE oid IS NOT NULL AND (kolable OR EXISTS (
                   SELECT 1 FROM events e WHERE e.stream_id = 'kolable-' || r.oid AND e.stream_version = 1))),
        facts AS (
            SELECT r.* FROM resolved r WHERE r.oid IS NULL OR r.oid NOT IN (SELECT oid FROM kolable))"""


async def check_ledger(conn: asyncpg.Connection, s: str) -> tuple[list[Finding], dict[str, Any]]:
    """Every rule above over the replay in schema `s`; returns the findings and the counts."""
    findings: list[Finding] = []
    f = _facts(s)

    # --- charges -----------------------------------------------------------------------------------
    rows = await conn.fetch(f"""
        WITH {f},
        charges AS (
            SELECT DISTINCT ON (oid, payment_key) oid, payment_key, amount, currency, stream_id, last_position
              FROM facts WHERE fact_type = 'UpstreamChargeSucceeded' AND data_gap IS NULL
             ORDER BY oid, payment_key, last_position),
        ours AS (
            SELECT order_id, reference, sum(amount)::bigint AS amount, min(currency) AS currency,
                   string_agg(entry, ',' ORDER BY entry) AS entries, min(global_position) AS position
              FROM {s}.rm_ledger_entries
             WHERE kind = 'third_party' AND entry IN ('capture', 'to_return')
             GROUP BY order_id, reference)
        SELECT coalesce(c.oid, o.order_id) AS order_id, coalesce(c.payment_key, o.reference) AS payment,
               c.amount AS upstream_amount, c.currency AS upstream_currency, c.stream_id,
               o.amount AS ledger_amount, o.currency AS ledger_currency, o.entries, o.position,
               EXISTS (SELECT 1 FROM {s}.rm_transactions t WHERE t.order_id = coalesce(c.oid, o.order_id))
                   AS has_transaction
          FROM charges c FULL JOIN ours o ON o.order_id = c.oid AND o.reference = c.payment_key
         WHERE c.oid IS NULL OR o.order_id IS NULL
            OR c.amount IS DISTINCT FROM o.amount OR c.currency IS DISTINCT FROM o.currency""")
    for r in rows:
        ours = _money(r["ledger_amount"], r["ledger_currency"])
        theirs = _money(r["upstream_amount"], r["upstream_currency"])
        details = {"payment": r["payment"], "ledger": ours, "upstream": theirs, "ledger_entries": r["entries"],
                   "ledger_position": r["position"], "upstream_stream": r["stream_id"],
                   "order_has_transaction": r["has_transaction"]}
        key = f"{r['order_id']}/{r['payment']}"
        if r["ledger_amount"] is None:
            findings.append(Finding("ledger_charge_missing", key, f"order {r['order_id']}: the provider captured "
                                    f"{_fmt(theirs)} ({r['payment']}) that the ledger never took"
                                    + ("" if r["has_transaction"] else " (no transaction for the order)"),
                                    r["order_id"], details))
        elif r["upstream_amount"] is None:
            findings.append(Finding("ledger_capture_missing_upstream", key, f"order {r['order_id']}: the ledger took "
                                    f"{_fmt(ours)} by card ({r['payment']}) that the provider never reported",
                                    r["order_id"], details))
        elif r["ledger_currency"] != r["upstream_currency"]:
            findings.append(Finding("ledger_currency_mismatch", key, f"order {r['order_id']}: payment {r['payment']} "
                                    f"is {_fmt(ours)} in the ledger, {_fmt(theirs)} at the provider",
                                    r["order_id"], details))
        else:
            findings.append(Finding("ledger_amount_mismatch", key, f"order {r['order_id']}: payment {r['payment']} "
                                    f"is {_fmt(ours)} in the ledger, {_fmt(theirs)} at the provider",
                                    r["order_id"], details))

    # --- refunds -----------------------------------------------------------------------------------
    rows = await conn.fetch(f"""
        WITH {f},
        theirs AS (
            SELECT DISTINCT ON (refund_id) refund_id, oid, amount, currency, status, closeloop_refund_id, stream_id
              FROM facts WHERE refund_id IS NOT NULL AND data_gap IS NULL
             ORDER BY refund_id, occurred_at DESC,
                      CASE WHEN status IN ('succeeded', 'failed', 'canceled') THEN 1 ELSE 0 END DESC,
                      last_position DESC),
        ours AS (
            -- A refund closeloop requested, named by the provider's refund id once known (or by the
            -- closeloop id the provider echoes in its metadata).
            SELECT r.order_id,
                   coalesce(r.provider_refund_id,
                            (SELECT t.refund_id FROM theirs t WHERE t.closeloop_refund_id = r.refund_id LIMIT 1),
                            'closeloop:' || r.refund_id) AS provider_refund_id,
                   r.refund_id, r.amount, r.currency, r.status, r.last_position AS position
              FROM {s}.rm_refunds r WHERE r.kind = 'third_party'
            UNION ALL
            SELECT order_id, reference, NULL, amount, currency, 'succeeded', global_position
              FROM {s}.rm_ledger_entries WHERE entry = 'external_refund')
        SELECT coalesce(o.order_id, t.oid) AS order_id, coalesce(t.refund_id, o.provider_refund_id) AS refund,
               o.refund_id AS closeloop_refund_id, o.amount AS ledger_amount, o.currency AS ledger_currency,
               o.status AS ledger_status, o.position, t.amount AS upstream_amount, t.currency AS upstream_currency,
               t.status AS upstream_status, t.stream_id
          FROM ours o FULL JOIN theirs t ON t.refund_id = o.provider_refund_id""")
    for r in rows:
        ours = _money(r["ledger_amount"], r["ledger_currency"])
        theirs = _money(r["upstream_amount"], r["upstream_currency"])
        details = {"refund": r["refund"], "closeloop_refund_id": r["closeloop_refund_id"], "ledger": ours,
                   "ledger_status": r["ledger_status"], "ledger_position": r["position"], "upstream": theirs,
                   "upstream_status": r["upstream_status"], "upstream_stream": r["stream_id"]}
        key = f"{r['order_id']}/{r['refund']}"
        mapped = _status_class(r["upstream_status"])
        if r["ledger_status"] is None:
            if r["upstream_status"] == "succeeded":
                findings.append(Finding("ledger_refund_missing", key, f"order {r['order_id']}: the provider refunded "
                                        f"{_fmt(theirs)} ({r['refund']}) that closeloop knows nothing of",
                                        r["order_id"], details))
        elif r["upstream_status"] is None:
            if r["ledger_status"] in ("pending", "succeeded"):  # requested: not at the provider yet
                findings.append(Finding("ledger_refund_missing_upstream", key, f"order {r['order_id']}: refund "
                                        f"{r['refund']} of {_fmt(ours)} is {r['ledger_status']} in closeloop; the "
                                        "provider never reported it", r["order_id"], details))
        elif mapped != r["ledger_status"] and not (r["ledger_status"] == "requested" and mapped == "pending"):
            findings.append(Finding("ledger_refund_status_mismatch", key, f"order {r['order_id']}: refund "
                                    f"{r['refund']} is {r['ledger_status']} in closeloop, {r['upstream_status']} at "
                                    "the provider", r["order_id"], details))
        elif r["ledger_currency"] != r["upstream_currency"]:
            findings.append(Finding("ledger_currency_mismatch", key, f"order {r['order_id']}: refund {r['refund']} is "
                                    f"{_fmt(ours)} in closeloop, {_fmt(theirs)} at the provider", r["order_id"],
                                    details))
        elif r["ledger_amount"] != r["upstream_amount"]:
            findings.append(Finding("ledger_amount_mismatch", key, f"order {r['order_id']}: refund {r['refund']} is "
                                    f"{_fmt(ours)} in closeloop, {_fmt(theirs)} at the provider", r["order_id"],
                                    details))

    # --- disputes ----------------------------------------------------------------------------------
    rows = await conn.fetch(f"""
        WITH {f},
        theirs AS (
            SELECT DISTINCT ON (dispute_id) dispute_id, oid, amount, currency, status, outcome, stream_id
              FROM facts WHERE dispute_id IS NOT NULL AND data_gap IS NULL
             ORDER BY dispute_id, (outcome IS NOT NULL) DESC, occurred_at DESC, last_position DESC),
        lost AS (SELECT * FROM theirs WHERE outcome = 'lost'),
        ours AS (SELECT order_id, reference, amount, currency, global_position
                   FROM {s}.rm_ledger_entries WHERE entry = 'chargeback')
        SELECT coalesce(o.order_id, l.oid) AS order_id, coalesce(l.dispute_id, o.reference) AS dispute,
               o.amount AS ledger_amount, o.currency AS ledger_currency, o.global_position AS position,
               l.amount AS upstream_amount, l.currency AS upstream_currency, l.stream_id,
               (SELECT t.outcome FROM theirs t WHERE t.dispute_id = o.reference) AS upstream_outcome
          FROM ours o FULL JOIN lost l ON l.dispute_id = o.reference
         WHERE o.reference IS NULL OR l.dispute_id IS NULL
            OR o.amount IS DISTINCT FROM l.amount OR o.currency IS DISTINCT FROM l.currency""")
    for r in rows:
        ours = _money(r["ledger_amount"], r["ledger_currency"])
        theirs = _money(r["upstream_amount"], r["upstream_currency"])
        details = {"dispute": r["dispute"], "ledger": ours, "ledger_position": r["position"], "upstream": theirs,
                   "upstream_stream": r["stream_id"], "upstream_outcome": r["upstream_outcome"]}
        key = f"{r['order_id']}/{r['dispute']}"
        if r["ledger_amount"] is None:
            findings.append(Finding("ledger_chargeback_missing", key, f"order {r['order_id']}: dispute {r['dispute']} "
                                    f"was lost ({_fmt(theirs)}) and the ledger has no chargeback", r["order_id"],
                                    details))
        elif r["upstream_amount"] is None:
            findings.append(Finding("ledger_chargeback_missing_upstream", key, f"order {r['order_id']}: the ledger "
                                    f"charged back {_fmt(ours)} for dispute {r['dispute']}, which the provider did "
                                    f"not report as lost ({r['upstream_outcome'] or 'no outcome'})", r["order_id"],
                                    details))
        else:
            kind = "ledger_currency_mismatch" if r["ledger_currency"] != r["upstream_currency"] \
                else "ledger_amount_mismatch"
            findings.append(Finding(kind, key, f"order {r['order_id']}: chargeback {r['dispute']} is {_fmt(ours)} in "
                                    f"the ledger, {_fmt(theirs)} at the provider", r["order_id"], details))

    # --- facts nobody can apply --------------------------------------------------------------------
    rows = await conn.fetch(f"""
        WITH {f}
        SELECT stream_id, oid, fact_type, data_gap, provider_amount, provider_currency, provider_event_id
          FROM facts WHERE data_gap IS NOT NULL ORDER BY stream_id""")
    for r in rows:
        findings.append(Finding(
            "ledger_upstream_data_gap", r["stream_id"],
            f"{r['fact_type']} {r['provider_event_id']}"
            + (f" for order {r['oid']}" if r["oid"] else "") + f" cannot be applied: {r['data_gap']}", r["oid"],
            {"provider": _money(r["provider_amount"], r["provider_currency"]), "data_gap": r["data_gap"],
             "upstream_stream": r["stream_id"]}))

    # --- refunds above what was paid ---------------------------------------------------------------
    rows = await conn.fetch(f"""
        WITH {f},
        refunds AS (SELECT order_id, sum(amount)::bigint AS amount FROM {s}.rm_refunds
                     WHERE status <> 'failed' GROUP BY order_id),
        ours AS (
            SELECT t.order_id, t.currency, t.paid, t.refunded AS decided, coalesce(r.amount, 0) AS executed,
                   t.chargebacks, t.external_refunds, t.last_position
              FROM {s}.rm_transactions t LEFT JOIN refunds r ON r.order_id = t.order_id),
        theirs AS (
            SELECT oid AS order_id, sum(amount)::bigint AS charged
              FROM (SELECT DISTINCT ON (oid, payment_key) oid, amount FROM facts
                     WHERE fact_type = 'UpstreamChargeSucceeded' AND data_gap IS NULL AND oid IS NOT NULL
                     ORDER BY oid, payment_key, last_position) c
             GROUP BY oid),
        upstream_back AS (
            SELECT oid AS order_id, (sum(amount) FILTER (WHERE k = 'refund'))::bigint AS refunded,
                   (sum(amount) FILTER (WHERE k = 'chargeback'))::bigint AS charged_back
              FROM (SELECT DISTINCT ON (refund_id) oid, 'refund' AS k, amount, status FROM facts
                     WHERE refund_id IS NOT NULL AND data_gap IS NULL
                     ORDER BY refund_id, occurred_at DESC, last_position DESC) rf
             WHERE status = 'succeeded' GROUP BY oid
            UNION ALL
            SELECT oid, NULL::bigint, sum(amount)::bigint FROM (
                   SELECT DISTINCT ON (dispute_id) oid, amount, outcome FROM facts
                     WHERE dispute_id IS NOT NULL AND data_gap IS NULL
                     ORDER BY dispute_id, (outcome IS NOT NULL) DESC, occurred_at DESC) d
             WHERE outcome = 'lost' GROUP BY oid)
        SELECT o.order_id, o.currency, o.paid, o.decided, o.executed, o.chargebacks, o.external_refunds,
               o.last_position, u.charged, coalesce(b.refunded, 0) AS upstream_refunded,
               coalesce(b.charged_back, 0) AS upstream_charged_back
          FROM ours o
          LEFT JOIN theirs u ON u.order_id = o.order_id
          LEFT JOIN (SELECT order_id, sum(refunded)::bigint AS refunded, sum(charged_back)::bigint AS charged_back
                       FROM upstream_back GROUP BY order_id) b ON b.order_id = o.order_id
         WHERE greatest(o.decided, o.executed) + o.chargebacks + o.external_refunds > o.paid
            OR coalesce(b.refunded, 0) + coalesce(b.charged_back, 0) > coalesce(u.charged, o.paid)""")
    for r in rows:
        c = r["currency"]
        back = max(r["decided"], r["executed"]) + r["chargebacks"] + r["external_refunds"]
        upstream_back = r["upstream_refunded"] + r["upstream_charged_back"]
        which = "closeloop's books" if back > r["paid"] else "the provider's reports"
        shown = back if back > r["paid"] else upstream_back
        paid = r["paid"] if back > r["paid"] else (r["charged"] if r["charged"] is not None else r["paid"])
        findings.append(Finding(
            "refund_above_paid", r["order_id"],
            f"order {r['order_id']}: {c} {shown} went back (refunds and chargebacks, by {which}) of {c} {paid} paid",
            r["order_id"],
            {"paid": _money(r["paid"], c), "refunds_decided": _money(r["decided"], c),
             "refunds_executed": _money(r["executed"], c), "chargebacks": _money(r["chargebacks"], c),
             "external_refunds": _money(r["external_refunds"], c),
             "upstream_charged": _money(r["charged"], c), "upstream_refunded": _money(r["upstream_refunded"], c),
             "upstream_charged_back": _money(r["upstream_charged_back"], c), "position": r["last_position"]}))

    excluded = await conn.fetchrow(f"""
        WITH {f}
        SELECT (SELECT count(*) FROM kolable) AS orders,
               (SELECT count(*) FROM resolved WHERE oid IN (SELECT oid FROM kolable)) AS facts""")
    totals = await conn.fetchrow(f"""
        SELECT (SELECT count(*) FROM {s}.rm_upstream_facts) AS upstream_facts,
               (SELECT count(*) FROM {s}.rm_ledger_entries) AS ledger_entries,
               (SELECT count(*) FROM {s}.rm_refunds) AS refunds,
               (SELECT count(*) FROM {s}.rm_transactions) AS transactions""")
    counts = {**dict(totals), "kolable_orders_excluded": excluded["orders"],
              "kolable_facts_excluded": excluded["facts"]}
    return findings, counts


def _status_class(upstream: str | None) -> str | None:
    """The provider's refund status in closeloop's terms (services/payments/application/refunds.py)."""
    if upstream is None:
        return None
    if upstream == "succeeded":
        return "succeeded"
    if upstream in ("failed", "canceled"):
        return "failed"
    return "pending"
