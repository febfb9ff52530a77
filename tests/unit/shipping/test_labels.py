"""Return labels (seed 001, case 14): one per RMA (the id derives from the RMA), barcode and QR payloads
that bind the label to its RMA and verify (HMAC), forged / altered / foreign payloads refused naming
`payload`, secrets rotated without reprinting, and a second scan that changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.domain.errors import RuleViolation
from services.rma.domain.events import Contact
from services.shipping.domain.events import InboundParcelScanned, LabelExtraUnitReceived, ReturnLabelIssued
from services.shipping.domain.label import LabelPurpose, LabelStatus, ReturnLabel, extra_unit_label_id, rma_label_id
from services.shipping.domain.label_payload import LabelSigner

AT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
SIGNER = LabelSigner(["current-secret", "previous-secret"])


def test_the_label_id_is_a_function_of_the_rma() -> None:
    assert rma_label_id("RMA-1") == rma_label_id("RMA-1") != rma_label_id("RMA-2")
    assert rma_label_id("RMA-1").startswith("RL-") and extra_unit_label_id("DUP-1").startswith("RX-")
    assert len(rma_label_id("x" * 64)) <= 64


@pytest.mark.parametrize("kind", ["barcode", "qr"])
def test_payloads_encode_the_label_and_the_rma_and_verify(kind: str) -> None:
    payload = SIGNER.barcode("RL-A", "RMA-1") if kind == "barcode" else SIGNER.qr("RL-A", "RMA-1", "island",
                                                                                    "912345678901")
    claim = SIGNER.verify(payload)
    assert (claim.label_id, claim.ref, claim.kind) == ("RL-A", "RMA-1", kind)
    assert "RL-A" in payload and "RMA-1" in payload
    if kind == "qr":
        assert (claim.carrier, claim.tracking_number) == ("island", "912345678901")
        assert len(payload) <= 1000
    else:
        assert len(payload) <= 500 and payload.isascii()


def test_a_payload_signed_with_the_previous_secret_still_verifies_during_a_rotation() -> None:
    old = LabelSigner(["previous-secret"]).barcode("RL-A", "RMA-1")
    assert SIGNER.verify(old).label_id == "RL-A"


@pytest.mark.parametrize("payload", [
    LabelSigner(["someone-else"]).barcode("RL-A", "RMA-1"),  # forged with another key
    SIGNER.barcode("RL-A", "RMA-1").replace("RMA-1", "RMA-2"),  # altered RMA
    SIGNER.qr("RL-A", "RMA-1", "island", "912345678901").replace("912345678901", "912345678902"),
    "CL1|RL-A|RMA-1", "CL1||RMA-1|SIG", "closeloop://return-label?v=1&label=RL-A", "RMA-1", "",
    "closeloop://return-label?v=2&label=RL-A&ref=RMA-1&carrier=island&tracking=1&sig=x",
])
def test_forged_altered_or_malformed_payloads_are_refused_on_payload(payload: str) -> None:
    with pytest.raises(RuleViolation) as exc:
        SIGNER.verify(payload)
    assert exc.value.field == "payload"


def test_a_signer_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        LabelSigner(["", ""])


def _label(rma: str = "RMA-1") -> ReturnLabel:
    label = ReturnLabel.issue_for_rma(rma, Contact(customer_id="c1"), "island", "912345678901",
                                      SIGNER.barcode(rma_label_id(rma), rma),
                                      SIGNER.qr(rma_label_id(rma), rma, "island", "912345678901"), AT)
    label.mark_saved()
    return label


def test_issue_then_scan_once() -> None:
    label = _label()
    assert label.status is LabelStatus.ISSUED and label.purpose is LabelPurpose.RMA_RETURN
    assert label.scan("TPE centre", AT, AT) is True
    [scanned] = label.pending
    assert isinstance(scanned, InboundParcelScanned) and scanned.rma_id == "RMA-1" and scanned.location == "TPE centre"
    label.mark_saved()
    assert label.scan("again", AT, AT) is False and label.pending == []  # a second scan changes nothing
    assert label.location == "TPE centre"


def test_rehydrated_label_keeps_its_state() -> None:
    label = _label()
    issued = ReturnLabelIssued(label_id=label.id, rma_id="RMA-1", carrier="island", tracking_number="912345678901",
                               barcode_payload=label.barcode_payload, qr_payload=label.qr_payload,
                               contact=Contact(customer_id="c1"), at=AT)
    again = ReturnLabel.rehydrate(label.id, [issued])
    assert again.version == 1 and again.rma_id == "RMA-1" and again.ref == "RMA-1"


def test_a_valid_payload_of_the_label_must_name_its_rma() -> None:
    label = _label()
    label.check_claim("RMA-1")
    with pytest.raises(RuleViolation) as exc:
        label.check_claim("RMA-9")
    assert exc.value.field == "payload"


def test_the_extra_units_label_is_no_step_of_the_rma_flow() -> None:
    label = ReturnLabel.issue_for_extra_unit("DUP-1", "RMA-1", None, None, "island", "912345678903", "b", "q", AT)
    assert label.purpose is LabelPurpose.EXTRA_UNIT_RETURN and label.ref == "DUP-1"
    assert not any(isinstance(e, ReturnLabelIssued) for e in label.pending)
    label.mark_saved()
    assert label.scan("TPE", AT, AT)
    assert isinstance(label.pending[0], LabelExtraUnitReceived)  # not InboundParcelScanned: the RMA must not move
