"""Kolable refund/re-buy reconciliation (war-room seed 000): import, classify, score, decide. Pure domain.

    result = parse_export(data, "orders.csv")                 # importer.py: rows + per-line errors
    records, facts = inputs_from_rows(latest_rows)            # classify.py: neutral inputs
    classifications = classify(records, facts + stripe_facts) # one per order, with reason and next step
    card = scorecard(classifications, decisions)              # scorecard.py
    order.decide("close", "...", actor="louis", role="approver", at=now)  # decisions.py: KolableOrder
"""

from services.payments.domain.kolable.classify import (
    DECISION_STATUSES,
    NEXT_STEPS,
    OWNERS,
    FactKind,
    OrderRecord,
    PaymentFact,
    classify,
    facts_from_row,
    inputs_from_rows,
)
from services.payments.domain.kolable.decisions import KolableOrder, PermissionDenied, RefundDecision
from services.payments.domain.kolable.events import (
    DecisionKind,
    DisputeStatus,
    ImportRowError,
    KolableClassification,
    KolableImportCompleted,
    KolableOrderClassified,
    KolableOrderImported,
    KolableOrderRow,
    KolableReconciliationMarked,
    KolableRefundDecided,
    KolableRole,
    PaymentStatus,
    ReconciliationStatus,
    import_stream_id,
    order_stream_id,
)
from services.payments.domain.kolable.importer import ImportedRow, ImportResult, parse_export
from services.payments.domain.kolable.scorecard import Scorecard, scorecard

__all__ = [
    "DECISION_STATUSES",
    "NEXT_STEPS",
    "OWNERS",
    "DecisionKind",
    "DisputeStatus",
    "FactKind",
    "ImportResult",
    "ImportRowError",
    "ImportedRow",
    "KolableClassification",
    "KolableImportCompleted",
    "KolableOrder",
    "KolableOrderClassified",
    "KolableOrderImported",
    "KolableOrderRow",
    "KolableReconciliationMarked",
    "KolableRefundDecided",
    "KolableRole",
    "OrderRecord",
    "PaymentFact",
    "PaymentStatus",
    "PermissionDenied",
    "ReconciliationStatus",
    "RefundDecision",
    "Scorecard",
    "classify",
    "facts_from_row",
    "import_stream_id",
    "inputs_from_rows",
    "order_stream_id",
    "parse_export",
    "scorecard",
]
