"""What a return label carries: a barcode and a QR payload binding the label to its RMA, signed so
that the service centre's scanner can trust them (seed 001, case 14). Pure (HMAC-SHA256).

- Barcode (Code 128, short enough for a thermal label): `CL1|{label_id}|{ref}|{sig}` where sig is
  the first 15 bytes of HMAC-SHA256(secret, "barcode\\n{label_id}\\n{ref}") in base32 (24 chars).
- QR: `closeloop://return-label?v=1&label={label_id}&ref={ref}&carrier={carrier}&tracking={number}&sig={sig}`
  with the whole HMAC-SHA256 of "qr\\nv1\\n{label_id}\\n{ref}\\n{carrier}\\n{number}" in base64url.

`ref` is the RMA id for an RMA's return label (`RL-…`), the duplicate id for the label of a
duplicate shipment's extra unit (`RX-…`). Several secrets may verify while one is rotated; the
first one signs. A payload that does not parse or whose signature does not verify with any of
them is refused (RuleViolation on `payload`: HTTP 422), as is a valid payload of another label.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from libs.domain.errors import RuleViolation

BARCODE_PREFIX = "CL1"
QR_PREFIX = "closeloop://return-label"


@dataclass(frozen=True)
class LabelClaim:
    """What a verified payload says."""

    label_id: str
    ref: str
    kind: str  # barcode | qr
    carrier: str | None = None
    tracking_number: str | None = None


def _refuse(rule: str) -> RuleViolation:
    return RuleViolation("payload", rule)


class LabelSigner:
    def __init__(self, secrets: Sequence[str]) -> None:
        keys = [s.encode() for s in secrets if s]
        if not keys:
            raise ValueError("at least one label signing secret is required")
        self._keys = keys

    @staticmethod
    def _barcode_sig(key: bytes, label_id: str, ref: str) -> str:
        mac = hmac.new(key, f"barcode\n{label_id}\n{ref}".encode(), hashlib.sha256).digest()[:15]
        return base64.b32encode(mac).decode()

    @staticmethod
    def _qr_sig(key: bytes, label_id: str, ref: str, carrier: str, tracking: str) -> str:
        mac = hmac.new(key, f"qr\nv1\n{label_id}\n{ref}\n{carrier}\n{tracking}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def barcode(self, label_id: str, ref: str) -> str:
        return f"{BARCODE_PREFIX}|{label_id}|{ref}|{self._barcode_sig(self._keys[0], label_id, ref)}"

    def qr(self, label_id: str, ref: str, carrier: str, tracking: str) -> str:
        sig = self._qr_sig(self._keys[0], label_id, ref, carrier, tracking)
        return (f"{QR_PREFIX}?v=1&label={quote(label_id)}&ref={quote(ref)}&carrier={quote(carrier)}"
                f"&tracking={quote(tracking)}&sig={sig}")

    def verify(self, payload: str) -> LabelClaim:
        """The claim of a barcode or QR payload whose signature verifies; RuleViolation otherwise."""
        payload = payload.strip()
        if payload.startswith(BARCODE_PREFIX + "|"):
            parts = payload.split("|")
            if len(parts) != 4 or not all(parts):
                raise _refuse("a barcode payload is CL1|label|ref|signature")
            _, label_id, ref, sig = parts
            if not any(hmac.compare_digest(sig, self._barcode_sig(k, label_id, ref)) for k in self._keys):
                raise _refuse("the barcode's signature does not verify (forged or altered label)")
            return LabelClaim(label_id, ref, "barcode")
        if payload.startswith(QR_PREFIX + "?"):
            query = parse_qs(urlsplit(payload).query, keep_blank_values=True, strict_parsing=False)
            values = {k: v[0] for k, v in query.items() if len(v) == 1}
            wanted = ("v", "label", "ref", "carrier", "tracking", "sig")
            if any(not values.get(k) for k in wanted) or values["v"] != "1":
                raise _refuse("a QR payload carries v=1, label, ref, carrier, tracking and sig")
            label_id, ref, carrier, tracking, sig = (values[k] for k in wanted[1:])
            if not any(hmac.compare_digest(sig, self._qr_sig(k, label_id, ref, carrier, tracking))
                       for k in self._keys):
                raise _refuse("the QR code's signature does not verify (forged or altered label)")
            return LabelClaim(label_id, ref, "qr", carrier, tracking)
        raise _refuse(f"not a closeloop return label: a barcode starts with {BARCODE_PREFIX}|, a QR payload with "
                      f"{QR_PREFIX}?")
